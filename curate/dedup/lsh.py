"""Locality-sensitive hashing of MinHash signatures: bands and rows chosen from the threshold,
and the bucket keys of each band.

A signature of k values is cut into b bands of r rows; two texts share a band's bucket with
probability 1 - (1 - s^r)^b at Jaccard s. The split is chosen recall-first: a pair at the
threshold becomes a candidate with probability >= 0.99, and among such splits the one with
the least false-positive mass is taken (128 bins, threshold 0.8: 16 bands x 6 rows).
Candidates are then verified with the exact Jaccard of their shingle sets
(curate.dedup.verify), so extra candidates cost time, not precision.

Chinese and Japanese texts (most units CJK characters, filters.text_units.is_cjk) have their
own threshold, `threshold_cjk` (0.6), with bands chosen for it; their band keys are salted,
so they only ever share a bucket with other mostly-CJK texts, and English (or any
spaced-script) results are exactly those of `threshold` alone. Why a lower threshold: one
inserted word or clause of k units in an n-unit text leaves a Jaccard of (n - 8) / (n + k)
with 5-gram shingles; a Chinese clause is about 13 characters (the median between two
punctuation marks in the Chinese edition of Dive into Deep Learning) and a paragraph often
50-120, so at 0.8 only about 75% of such near copies were found in 2,000 real paragraphs of
that book, at 0.6 over 99%, while no two distinct paragraphs of it had a Jaccard above 0.46
(tests/bench/bench_zh.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from curate.dedup.buckets import NEAR, with_kind

CJK_SALT = 1 << 20  # added to the band index of mostly-CJK texts: their buckets are their own


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of uint64 values (also decontamination's n-gram hashes)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _integrate(f, lo: float, hi: float, steps: int = 200) -> float:
    xs = np.linspace(lo, hi, steps + 1)
    return float(np.trapezoid(f(xs), xs))


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, min_recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): recall first, because every candidate pair is verified afterwards.

    Among the splits whose chance of making a pair at exactly the threshold a candidate,
    1 - (1 - t^r)^b, is at least `min_recall`, take the one with the least false-positive
    mass (the integral of that S-curve below the threshold); extra candidates cost only
    verification time, missed ones are lost for good.
    """
    best, best_fp = (num_perm, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            if 1 - (1 - threshold ** rows) ** bands < min_recall:
                continue
            fp = _integrate(lambda s, r=rows, b=bands: 1 - (1 - s ** r) ** b, 0.0, threshold)
            if fp < best_fp:
                best, best_fp = (bands, rows), fp
    return best


def lsh_settings(threshold: float, threshold_cjk: float, num_perm: int) -> dict[str, Any]:
    bands, rows = lsh_params(threshold, num_perm)
    bands_cjk, rows_cjk = lsh_params(threshold_cjk, num_perm)
    return {"threshold": threshold, "threshold_cjk": threshold_cjk, "bands": bands, "rows": rows,
            "bands_cjk": bands_cjk, "rows_cjk": rows_cjk}


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64: one polynomial hash of each band's `rows` signature values."""
    sig = np.atleast_2d(sig).astype(np.uint64)
    h = np.zeros((sig.shape[0], bands), np.uint64)
    view = sig[:, : bands * rows].reshape(sig.shape[0], bands, rows)
    for r in range(rows):
        h = h * np.uint64(0x100000001B3) + view[:, :, r]
    h ^= h >> np.uint64(33)
    return h


def band_bucket_keys(hb: np.ndarray, salt: int = 0) -> np.ndarray:
    """(n_docs, bands) bucket keys of LSH band hashes; the band index (plus `salt`) is mixed in."""
    index = np.arange(1, hb.shape[1] + 1, dtype=np.uint64) + np.uint64(salt)
    offsets = index * np.uint64(0x9E3779B97F4A7C15)
    return with_kind(mix64(hb ^ offsets[None, :]), NEAR)


def near_bucket_keys(sig: np.ndarray, cjk: np.ndarray, cfg: dict[str, Any]) -> list[np.ndarray]:
    """Per document, its LSH bucket keys: banded for `threshold` (bands x rows), or for mostly-CJK
    documents for `threshold_cjk` (bands_cjk x rows_cjk) and salted, so the two never meet."""
    out: list[np.ndarray] = [np.zeros(0, np.uint64)] * len(sig)
    for flag, bands, rows in ((False, cfg["bands"], cfg["rows"]), (True, cfg["bands_cjk"], cfg["rows_cjk"])):
        idx = np.flatnonzero(cjk == flag)
        if len(idx):
            keys = band_bucket_keys(band_hashes(sig[idx], bands, rows), CJK_SALT if flag else 0)
            for i, k in zip(idx.tolist(), keys):
                out[i] = k
    return out
