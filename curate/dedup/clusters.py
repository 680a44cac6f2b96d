"""near_duplicate_clusters: the stage's text algorithm in one process, on a list of texts
(for tests, benchmarks and notebooks; curate.stages.dedupe runs the same steps on Ray).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.dedup.buckets import candidate_pairs
from curate.dedup.components import components
from curate.dedup.lsh import lsh_settings, near_bucket_keys
from curate.dedup.minhash import signatures_from_hashes
from curate.dedup.shingles import text_units
from curate.dedup.verify import verify_pairs
from filters.text_units import is_cjk


def near_duplicate_clusters(texts: Sequence[str], threshold: float = 0.8, *, threshold_cjk: float = 0.6,
                            num_perm: int = 128, shingle: int = 5) -> list[int]:
    """Cluster label per text (the smallest index of its cluster), same algorithm as the stage.
    Two mostly-CJK texts are compared at `threshold_cjk` (the recipe default, see the module docstring)."""
    norm, hashes = text_units(texts, shingle)
    cjk = np.array([is_cjk(t) for t in norm], bool)
    sig = signatures_from_hashes(hashes, num_perm)
    cfg = lsh_settings(threshold, threshold_cjk, num_perm) | {"image_hamming": 0, "near_image": False,
                                                              "video_cosine": 1.0}
    has_text = np.array([len(h) > 0 for h in hashes], bool)
    per_doc = near_bucket_keys(sig, cjk, cfg)
    keys = np.concatenate([per_doc[i] for i in np.flatnonzero(has_text)] or [np.zeros(0, np.uint64)])
    docs = np.repeat(np.flatnonzero(has_text), [len(per_doc[i]) for i in np.flatnonzero(has_text)])
    rank = np.arange(len(texts))
    u, v, kind = candidate_pairs(keys, docs, rank)
    offsets = np.concatenate(([0], np.cumsum([len(h) for h in hashes]))).astype(np.int64)
    flat = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    ok, sim = verify_pairs(u, v, kind, flat, offsets, ["[]"] * len(texts), [""] * len(texts), cfg, cjk)
    out = components(len(texts), u[ok], v[ok], kind[ok], sim[ok], rank)
    labels = np.arange(len(texts))
    labels[out["node"]] = out["kept"]
    return labels.tolist()
