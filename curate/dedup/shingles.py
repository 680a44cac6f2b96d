"""What a text is made of for near-duplicate detection: its normalised form and the sorted,
unique 32-bit hashes of its shingles.

A shingle is a run of n consecutive units (filters.text_units): words in spaced scripts, and
single characters inside Chinese or Japanese runs, which have no spaces, so one inserted word
changes few shingles in either. The n-gram hash is a polynomial rolling hash over per-word
crc32 values (mod 2^64, mixed down to 32 bits), computed for a whole batch of texts at once
with numpy: one crc32 per distinct word, no Python loop over shingles. Two texts' shingle
sets give their Jaccard similarity, the measure MinHash estimates (Broder 1997).
"""

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from filters.text_units import units

MAX_HASH = np.uint64((1 << 32) - 1)


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def sample_text(conversations: Iterable[dict[str, Any]] | None) -> str:
    return "\n".join(t["value"] for t in conversations or [] if t.get("value"))


def text_units(texts: Sequence[str], n: int) -> tuple[list[str], list[np.ndarray]]:
    """The normalised texts and their shingle hashes (sorted, unique uint32 per text).

    The one place that decides what a text's units are: word n-grams, and character n-grams
    inside CJK runs (Chinese has no spaces; one inserted word must change few shingles).
    """
    norm = [normalise(t) for t in texts]
    return norm, shingle_hashes_batch(norm, n)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes (sorted, unique) of the word n-grams of one normalised text."""
    return shingle_hashes_batch([text], n)[0]


def shingle_hashes_batch(texts: Sequence[str], n: int, chunk: int = 2048) -> list[np.ndarray]:
    """Shingle hashes of many texts, vectorised over chunks of `chunk` texts (bounded memory)."""
    if len(texts) > chunk:
        return [h for i in range(0, len(texts), chunk) for h in _shingle_hashes_chunk(texts[i:i + chunk], n)]
    return _shingle_hashes_chunk(texts, n)


def _shingle_hashes_chunk(texts: Sequence[str], n: int) -> list[np.ndarray]:
    """Shingle hashes of many texts, vectorised over the batch.

    Words are factorised once for the whole batch (pandas), so crc32 runs once per distinct
    word; the n-gram hash is a polynomial rolling hash over word hashes mod 2^64, mixed
    down to 32 bits. A text shorter than n words is one shingle of all its words.
    """
    import pandas as pd

    words = [units(t) for t in texts]
    lengths = np.array([len(w) for w in words], np.int64)
    out: list[np.ndarray] = [np.zeros(0, np.uint64)] * len(texts)
    if lengths.sum() == 0:
        return out
    codes, uniques = pd.factorize(pd.Series([x for ws in words for x in ws], dtype=object), sort=False)
    word_hash = np.fromiter((zlib.crc32(u.encode()) for u in uniques), np.uint64, len(uniques))
    w = word_hash[codes]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    for n_eff in sorted({min(n, int(x)) for x in lengths if x}):
        docs = np.flatnonzero(np.minimum(lengths, n) == n_eff) if n_eff < n else np.flatnonzero(lengths >= n)
        if not len(docs):
            continue
        h = np.zeros(len(w) - n_eff + 1, np.uint64)
        for k in range(n_eff):  # h[i] = sum(w[i+k] * P^(n-1-k)) mod 2^64
            h = h * np.uint64(0x100000001B3) + w[k: len(w) - n_eff + 1 + k]
        h ^= h >> np.uint64(29)
        h &= MAX_HASH
        # the n-grams that start and end inside each document, tagged with the document's
        # place in `docs` in the high bits: one sort gives every document's sorted, unique set
        count = lengths[docs] - n_eff + 1
        first = np.concatenate(([0], np.cumsum(count)[:-1]))
        at = np.repeat(starts[docs] - first, count) + np.arange(int(count.sum()))
        tagged = (np.repeat(np.arange(len(docs), dtype=np.uint64), count) << np.uint64(32)) | h[at]
        tagged.sort()
        tagged = tagged[np.concatenate(([True], tagged[1:] != tagged[:-1]))]
        bounds = np.searchsorted(tagged >> np.uint64(32), np.arange(len(docs) + 1, dtype=np.uint64)).tolist()
        values = tagged & MAX_HASH
        for j, d in enumerate(docs.tolist()):
            out[d] = values[bounds[j]:bounds[j + 1]]
    return out
