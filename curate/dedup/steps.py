"""Dedupe's steps over Arrow blocks, as the stage (curate.stages.dedupe) schedules them.

Each function is one task's work on compact tables; the stage decides how many tasks run and
what they exchange. In order: `features` (a map: per sample its bucket keys, shingle hashes,
media identity and keep order), `plan` (one task: candidate pairs of every bucket, on 8-byte
keys and ranks), `route` (per features block: the features of paired samples, split by the
verification partition that needs them), `verify_partition` (per partition: the pairs that
really are duplicates), `decide` (one task: connected components, the sample each cluster
keeps) and `mark` (a map: the others become rejects naming the kept sample).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from curate.dedup.buckets import KINDS, candidate_pairs, sample_keys
from curate.dedup.components import components
from curate.dedup.lsh import near_bucket_keys
from curate.dedup.minhash import signatures_from_hashes
from curate.dedup.phash import phash_cached
from curate.dedup.shingles import sample_text, text_units
from curate.dedup.verify import verify_pairs
from curate.records import reject_where
from filters.text_units import is_cjk

FEATURES = pa.schema([("id", pa.string()), ("order", pa.int32()), ("keys", pa.list_(pa.uint64())),
                      ("shingles", pa.binary()), ("cjk", pa.bool_()), ("media", pa.string()),
                      ("question", pa.string())])
ROUTED = pa.schema([("part", pa.int32()), ("node", pa.int64()), ("shingles", pa.binary()),
                    ("cjk", pa.bool_()), ("media", pa.string()), ("question", pa.string())])
KEYS = pa.schema([FEATURES.field(n) for n in ("id", "order", "keys")])
EDGES = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.int8()), ("sim", pa.float64())])
DECISIONS = pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def features(batch: pa.Table, cfg: dict[str, Any], source_order: dict[str, int]) -> pa.Table:
    """Per alive sample: its bucket keys, shingle hashes, media identity and keep-rule order."""
    import pyarrow.compute as pc

    batch = batch.filter(pc.is_null(batch.column("reject_reason")))
    if not len(batch):
        return FEATURES.empty_table()
    convs = batch.column("conversations").to_pylist()
    media_rows = batch.column("media").to_pylist()
    norm, hashes = text_units([sample_text(c) for c in convs], cfg["shingle"])
    has_text = [bool(t) and len(h) > 0 for t, h in zip(norm, hashes)]
    cjk = np.array([is_cjk(t) for t in norm], bool)
    bands = None
    if cfg["near_text"] and any(has_text):
        bands = near_bucket_keys(signatures_from_hashes(hashes, cfg["num_perm"]), cjk, cfg)
    keys, media_out, questions = [], [], []
    for i, (text, conv, mrows) in enumerate(zip(norm, convs, media_rows)):
        media = []
        for m in mrows or []:
            hashed = cfg["near_image"] and m["kind"] == "image" and m.get("path")
            ph = phash_cached(m["path"]) if hashed else None
            media.append({"kind": m["kind"], "sha": m.get("sha256") or m.get("ref"), "ph": ph})
        keys.append(sample_keys(text, media, bands[i] if bands is not None and has_text[i] else None, cfg))
        media_out.append(json.dumps(media) if media else "[]")
        questions.append(next((t["value"] for t in conv or [] if t["from"] == "human"), "") or "")
    order = [source_order.get(s, 1 << 30) for s in batch.column("source").to_pylist()]
    return pa.table({"id": batch.column("id"), "order": pa.array(order, pa.int32()),
                     "keys": pa.array(keys, pa.list_(pa.uint64())),
                     "shingles": [h.astype(np.uint32).tobytes() for h in hashes], "cjk": cjk,
                     "media": media_out, "question": questions}, schema=FEATURES)


def plan(partitions: int, *key_blocks: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, int]:
    """One task on compact arrays (ids, ranks, bucket keys; no row payload): candidate pairs.

    Returns (route: id -> node and the partitions that need its features; pairs: member,
    anchor, kind, partition; nodes: node -> id, rank; the number of pairs), nodes numbered
    0..n-1 over the samples that are in at least one candidate pair.
    """
    import pyarrow.compute as pc

    tables = [t for t in key_blocks if len(t)]
    table = pa.concat_tables(tables).combine_chunks() if tables else KEYS.empty_table()
    n = len(table)
    by_rank = pc.sort_indices(table, sort_keys=[("order", "ascending"), ("id", "ascending")]).to_numpy()
    rank = np.empty(n, np.int64)
    rank[by_rank] = np.arange(n)
    keys_col = table.column("keys")
    keys_col = keys_col.chunk(0) if keys_col.num_chunks else pa.array([], pa.list_(pa.uint64()))
    flat_keys = keys_col.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
    docs = pc.list_parent_indices(keys_col).to_numpy(zero_copy_only=False).astype(np.int64)
    u, v, kind = candidate_pairs(flat_keys, docs, rank)
    involved = np.unique(np.concatenate((u, v)))
    compact = np.full(n, -1, np.int64)
    compact[involved] = np.arange(len(involved))
    cu, cv = compact[u], compact[v]
    part = (cu % partitions).astype(np.int32)
    ids = table.column("id").take(pa.array(involved))
    # the features of a pair's member and anchor go to the member's partition
    need = pa.table({"node": np.concatenate((cu, cv)), "part": np.concatenate((part, part))})
    need = need.group_by("node").aggregate([("part", "distinct")]).sort_by("node")
    route = pa.table({"id": ids.take(need.column("node")), "node": need.column("node"),
                      "parts": need.column("part_distinct")})
    pairs = pa.table({"u": cu, "v": cv, "kind": kind, "part": part})
    nodes = pa.table({"id": ids, "rank": rank[involved]})
    return route, pairs, nodes, len(pairs)


def route(block: pa.Table, route: pa.Table, partitions: int) -> list[pa.Table]:
    """The features of one block's samples that are in candidate pairs, split by the
    partitions that verify them (a sample may be needed by several)."""
    import pyarrow.compute as pc

    if not len(block):  # Ray Data may hand on an empty block without the features' schema
        return [ROUTED.empty_table()] * partitions
    pos = pc.index_in(block.column("id"), value_set=route.column("id"))
    hit = pc.is_valid(pos)
    if not pc.any(hit).as_py():
        return [ROUTED.empty_table()] * partitions
    rows = block.filter(hit)
    r = route.take(pos.filter(hit))
    parts = r.column("parts").combine_chunks()
    rep = pc.list_parent_indices(parts)
    rows = rows.take(rep)
    part = parts.flatten().cast(pa.int32())
    routed = pa.table({"part": part, "node": r.column("node").take(rep)}
                      | {name: rows.column(name) for name in ("shingles", "cjk", "media", "question")},
                      schema=ROUTED)
    part_np = part.to_numpy()
    return [routed.filter(pa.array(part_np == p)) for p in range(partitions)]


def verify_partition(pairs: pa.Table, cfg: dict[str, Any], part: int, *pieces: pa.Table) -> pa.Table:
    """Verify the candidate pairs of partition `part`; `pieces` hold the features they need."""
    import pyarrow.compute as pc

    group = pa.concat_tables([t for t in pieces if len(t)] or [ROUTED.empty_table()])
    if not len(group):
        return EDGES.empty_table()
    pairs = pairs.filter(pc.equal(pairs.column("part"), part))
    if not len(pairs):
        return EDGES.empty_table()
    node = group.column("node").to_numpy()
    order = np.argsort(node, kind="stable")
    node = node[order]
    local_u = order[np.searchsorted(node, pairs.column("u").to_numpy())]
    local_v = order[np.searchsorted(node, pairs.column("v").to_numpy())]
    shingles = group.column("shingles").to_pylist()
    hashes = [np.frombuffer(s, np.uint32) for s in shingles]
    offsets = np.concatenate(([0], np.cumsum([len(h) for h in hashes]))).astype(np.int64)
    flat = np.concatenate(hashes) if hashes else np.zeros(0, np.uint32)
    kind = pairs.column("kind").to_numpy()
    ok, sim = verify_pairs(local_u, local_v, kind, flat, offsets, group.column("media").to_pylist(),
                           group.column("question").to_pylist(), cfg,
                           group.column("cjk").to_numpy(zero_copy_only=False).astype(bool))
    return pa.table({"u": pairs.column("u").filter(pa.array(ok)), "v": pairs.column("v").filter(pa.array(ok)),
                     "kind": kind[ok], "sim": np.round(sim[ok], 4)}, schema=EDGES)


def decide(nodes: pa.Table, *edge_blocks: pa.Table) -> pa.Table:
    """Connected components over the verified edges (compact int ids); the rows that leave."""
    tables = [t for t in edge_blocks if len(t)]
    edges = pa.concat_tables(tables) if tables else EDGES.empty_table()
    rank = nodes.column("rank").to_numpy()
    out = components(len(nodes), edges.column("u").to_numpy(), edges.column("v").to_numpy(),
                     edges.column("kind").to_numpy(), edges.column("sim").to_numpy(), rank)
    ids = nodes.column("id")
    kept = ids.take(pa.array(out["kept"])).to_pylist()
    detail = [f"duplicate of {k} (similarity {s:.2f}, cluster of {z})"
              for k, s, z in zip(kept, out["sim"].tolist(), out["size"].tolist())]
    return pa.table({"id": ids.take(pa.array(out["node"])),
                     "reason": pa.array([KINDS[k] for k in out["kind"].tolist()], pa.string()),
                     "detail": pa.array(detail, pa.string())})


def mark(batch: pa.Table, decisions: Any) -> pa.Table:
    """Reject the rows named in the decisions (a Shared table; vectorised lookup by id)."""
    import pyarrow.compute as pc

    decisions = decisions.value()
    if not len(decisions) or not len(batch):
        return batch
    pos = pc.index_in(batch.column("id"), value_set=decisions.column("id"))
    return reject_where(batch, pc.is_valid(pos), "dedupe", decisions.column("reason").take(pos),
                        decisions.column("detail").take(pos))
