"""Duplicate clusters: the connected components of the verified pairs, and the one kept.

Duplicates are transitive for the purpose of removal (a ~ b and b ~ c: keep one of the three),
and candidate pairs only link members to a bucket's first few samples, so clusters come from
the connected components of the verified edges (scipy.sparse.csgraph, on compact integer
ids). Each cluster keeps its best-ranked node (the keep rule) and every other node leaves,
with the kind and similarity of its best edge.
"""

from __future__ import annotations

import numpy as np


def components(n: int, u: np.ndarray, v: np.ndarray, kind: np.ndarray, sim: np.ndarray, rank: np.ndarray
               ) -> dict[str, np.ndarray]:
    """Connected components of the verified duplicate graph on compact ids 0..n-1 (scipy).

    Returns, for the nodes that leave (every member but the best-ranked of its cluster): `node`,
    the `kept` node, the `kind` and `sim` of the node's best edge, and the cluster `size`.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(u):
        z = np.zeros(0, np.int64)
        return {"node": z, "kept": z, "kind": np.zeros(0, np.int8), "sim": np.zeros(0), "size": z}
    graph = coo_matrix((np.ones(len(u), np.int8), (u, v)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    involved = np.zeros(n, bool)
    involved[u] = involved[v] = True
    size = np.bincount(label[involved], minlength=label.max() + 1)
    by_rank = np.lexsort((rank, label))
    first = np.ones(n, bool)
    first[1:] = label[by_rank][1:] != label[by_rank][:-1]
    kept_of = np.empty(label.max() + 1, np.int64)
    kept_of[label[by_rank[first]]] = by_rank[first]
    ends = np.concatenate((u, v))
    e_kind, e_sim = np.concatenate((kind, kind)), np.concatenate((sim, sim))
    best = np.lexsort((-e_sim, e_kind, ends))
    take = np.ones(len(best), bool)
    take[1:] = ends[best][1:] != ends[best][:-1]
    node = ends[best[take]]
    leave = kept_of[label[node]] != node
    node, pick = node[leave], best[take][leave]
    return {"node": node, "kept": kept_of[label[node]], "kind": e_kind[pick], "sim": e_sim[pick],
            "size": size[label[node]]}
