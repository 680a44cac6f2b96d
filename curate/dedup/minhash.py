"""One-permutation MinHash signatures: a fixed-size sketch per text whose agreement in each
position estimates the Jaccard similarity of two shingle sets.

Classic MinHash (Broder 1997) applies k hash functions to every shingle; one permutation
hashing (Li, Owen & Zhang 2012) hashes each shingle once and splits the hash range into k
bins, with rotation densification (Shrivastava & Li 2014) for the empty bins of short texts.
Same estimate, k times less hashing; vectorised over a whole batch of texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.dedup.shingles import MAX_HASH, shingle_hashes_batch

EMPTY = np.uint64(1 << 40)  # marks a bin no shingle fell into (above any 32-bit value)


def signatures(texts: Sequence[str], num_perm: int, n: int) -> np.ndarray:
    """MinHash signatures (len(texts) x num_perm, uint32) of normalised texts."""
    return signatures_from_hashes(shingle_hashes_batch(texts, n), num_perm)


def signatures_from_hashes(hashes: Sequence[np.ndarray], num_perm: int, seed: int = 1,
                           chunk: int = 8192) -> np.ndarray:
    """One-permutation MinHash signatures (len(hashes) x num_perm, uint32), all documents at once.

    Classic MinHash applies num_perm hash functions to every shingle (n x k work). One
    permutation hashing (Li, Owen & Zhang 2012) hashes each shingle once, uses the top bits
    as a bin (num_perm bins) and keeps the minimum of the rest per bin: n work, the same
    collision probability (= Jaccard) per bin. Empty bins of short documents are filled by
    rotation densification (Shrivastava & Li 2014): an empty bin borrows the next non-empty
    bin's value, offset by the distance, so two documents still agree on it with probability
    ~ Jaccard. Vectorised over the whole batch: one np.minimum.at, one cumulative minimum.
    """
    if num_perm & (num_perm - 1):
        raise ValueError(f"num_perm must be a power of two for one-permutation hashing, got {num_perm}")
    if len(hashes) > chunk:  # bounded temporaries: a few arrays of the chunk's shingle count
        return np.concatenate([signatures_from_hashes(hashes[i:i + chunk], num_perm, seed, chunk)
                               for i in range(0, len(hashes), chunk)])
    n_docs = len(hashes)
    sig = np.full((n_docs, num_perm), EMPTY, np.uint64)
    lengths = np.array([len(h) for h in hashes], np.int64)
    if n_docs == 0 or lengths.sum() == 0:
        return sig.astype(np.uint32)
    rng = np.random.default_rng(seed)
    mult = np.uint64(rng.integers(1 << 62, dtype=np.uint64) | np.uint64(1))
    add = np.uint64(rng.integers(1 << 62, dtype=np.uint64))
    hv = np.concatenate([h for h in hashes if len(h)]).astype(np.uint64)
    doc = np.repeat(np.arange(n_docs), lengths)
    mixed = hv * mult + add  # multiply-add mod 2^64: a fast universal hash
    mixed ^= mixed >> np.uint64(31)
    mixed *= np.uint64(0x9E3779B97F4A7C15)
    bins = (mixed >> np.uint64(64 - num_perm.bit_length() + 1)).astype(np.int64)
    values = (mixed >> np.uint64(8)) & MAX_HASH
    np.minimum.at(sig.reshape(-1), doc * num_perm + bins, values)
    _densify(sig)
    return sig.astype(np.uint32)


def _densify(sig: np.ndarray) -> None:
    """Fill empty bins (EMPTY) from the next non-empty bin to the right, circularly."""
    k = sig.shape[1]
    empty = sig == EMPTY
    rows = np.flatnonzero(empty.any(axis=1) & ~empty.all(axis=1))  # a row of no shingle stays empty
    if not len(rows):
        return
    empty, sub = empty[rows], sig[rows]
    j = np.arange(k, dtype=np.int32)
    # index of each bin if it is non-empty, 2k if empty, over the row written twice (circular);
    # a right-to-left running minimum is then the next non-empty bin at or after each position
    own = np.where(empty, np.int32(2 * k), j)
    doubled = np.concatenate([own, np.where(empty, np.int32(2 * k), j + np.int32(k))], axis=1)
    nxt = np.minimum.accumulate(doubled[:, ::-1], axis=1)[:, ::-1][:, :k]
    src = np.take_along_axis(sub, nxt % k, axis=1)
    filled = (src + (nxt - j).astype(np.uint64) * np.uint64(0x5BD1E995)) & MAX_HASH
    sig[rows] = np.where(empty, filled, sub)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)
