"""Verification of candidate pairs: the exact checks that decide which candidates are duplicates.

- near_duplicate: the exact Jaccard of the two shingle-hash sets, vectorised over all pairs
  (each shingle tagged with its pair number, one np.isin), against `threshold` (or
  `threshold_cjk` when both texts are mostly CJK), and compatible media;
- media: the same bytes, or for images a pHash within `image_hamming` bits;
- duplicate_video_instruction: the cosine of the two questions' word uni+bigram hashing
  vectors (Baichuan-omni's repeated instructions about one video);
- exact_duplicate needs no check: its bucket key is the text and media themselves.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.dedup.buckets import EXACT, IMAGE, NEAR, VIDEO
from curate.dedup.phash import hamming
from curate.dedup.shingles import normalise
from filters.text_units import units


def media_compatible(ma: list[dict[str, Any]], mb: list[dict[str, Any]], k: int, use_phash: bool) -> bool:
    if len(ma) != len(mb):
        return False
    for x, y in zip(ma, mb):
        if x["kind"] != y["kind"]:
            return False
        if x["sha"] == y["sha"]:
            continue
        if not (use_phash and x["kind"] == "image" and x.get("ph") is not None and y.get("ph") is not None
                and hamming(x["ph"], y["ph"]) <= k):
            return False
    return True


def hashing_vector(text: str, dims: int = 1 << 18) -> dict[int, float]:
    words = units(normalise(text))
    grams = words + [f"{x} {y}" for x, y in itertools.pairwise(words)]
    vec: dict[int, float] = {}
    for g in grams:
        j = zlib.crc32(g.encode()) % dims
        vec[j] = vec.get(j, 0.0) + 1.0
    norm = sum(v * v for v in vec.values()) ** 0.5 or 1.0
    return {j: v / norm for j, v in vec.items()}


def cosine(a: dict[int, float], b: dict[int, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(j, 0.0) for j, v in a.items())


def jaccard_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted, unique shingle-hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _gather(flat: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated shingles of documents idx, and which position of idx each came from."""
    lengths = offsets[idx + 1] - offsets[idx]
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(idx)), lengths)
    start = np.repeat(offsets[idx] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return flat[start + np.arange(total)], owner


def jaccard_pairs(flat: np.ndarray, offsets: np.ndarray, u: np.ndarray, v: np.ndarray,
                  chunk: int = 20_000) -> np.ndarray:
    """Exact Jaccard of the shingle sets of documents u[i] and v[i], vectorised over pairs.

    `flat[offsets[d]:offsets[d+1]]` are document d's sorted, unique shingle hashes. Each
    shingle is tagged with its pair number, so one np.isin finds every intersection at once.
    """
    out = np.ones(len(u), np.float64)
    for s in range(0, len(u), chunk):
        uu, vv = u[s:s + chunk], v[s:s + chunk]
        hu, pu = _gather(flat, offsets, uu)
        hv, pv = _gather(flat, offsets, vv)
        ku = (pu.astype(np.uint64) << np.uint64(32)) | hu.astype(np.uint64)
        kv = (pv.astype(np.uint64) << np.uint64(32)) | hv.astype(np.uint64)
        inter = np.bincount(pu[np.isin(ku, kv, assume_unique=True)], minlength=len(uu)).astype(np.float64)
        lu, lv = offsets[uu + 1] - offsets[uu], offsets[vv + 1] - offsets[vv]
        union = lu + lv - inter
        out[s:s + chunk] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def verify_pairs(u: np.ndarray, v: np.ndarray, kind: np.ndarray, flat: np.ndarray, offsets: np.ndarray,
                 media: Sequence[str], questions: Sequence[str], cfg: dict[str, Any],
                 cjk: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(is a duplicate, similarity) of each candidate pair; u, v index flat/offsets, media, questions
    and `cjk` (mostly-CJK texts: a pair of two is held to cfg["threshold_cjk"])."""
    ok = kind == EXACT
    sim = np.ones(len(u), np.float64)
    near = np.flatnonzero(kind == NEAR)
    if len(near):
        sim[near] = jaccard_pairs(flat, offsets, u[near], v[near])
        threshold = np.full(len(near), cfg["threshold"])
        if cjk is not None:
            threshold[cjk[u[near]] & cjk[v[near]]] = cfg.get("threshold_cjk", cfg["threshold"])
        passed = near[sim[near] >= threshold]
        for i in passed.tolist():  # same media string: same bytes (or both text-only)
            a, b = media[u[i]], media[v[i]]
            ok[i] = a == b or media_compatible(json.loads(a), json.loads(b), cfg["image_hamming"],
                                               cfg["near_image"])
    for i in np.flatnonzero(kind == IMAGE).tolist():
        ma, mb = json.loads(media[u[i]]), json.loads(media[v[i]])
        ok[i] = media_compatible(ma, mb, cfg["image_hamming"], True) and all(m["kind"] == "image" for m in ma)
    for i in np.flatnonzero(kind == VIDEO).tolist():
        sim[i] = cosine(hashing_vector(questions[u[i]]), hashing_vector(questions[v[i]]))
        ok[i] = sim[i] >= cfg["video_cosine"]
    return ok, sim
