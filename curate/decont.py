"""Benchmark decontamination: an n-gram index of evaluation items and its lookup.

A training sample that contains an evaluation question inflates every score the model later
reports. As GPT-3 (Brown et al. 2020, appendix C) and DataTrove's n-gram decontamination do,
a sample is contaminated when one of its normalised n-grams (13 words by default) occurs in a
benchmark item. Text is normalised as dedupe normalises it (NFKC, casefold, punctuation gone)
and cut into filters.text_units: words in spaced scripts, single characters in Chinese and
Japanese, where an item that is mostly CJK is indexed by character n-grams (`n_cjk`, 30 by
default: about 20 Chinese words, the span of a 13-word English n-gram).

The index is built once, on the driver, as compact arrays: the sorted 64-bit hashes of every
item's n-grams with the item each came from, a bitmap of their top bits (a lookup first tests
one bit, and only the few windows that pass are searched in the sorted array), and the items'
normalised texts. Lookups are vectorised over a whole block of turns: the units of all turns
are factorised once, each distinct unit hashed once (crc32, mixed to 64 bits), the n-gram
hashes are a polynomial rolling hash over them (as curate.dedup.shingles). A hash hit is then
checked on the text itself (the n-gram must occur in the item's normalised text), so a hash
clash never rejects a sample.
"""

from __future__ import annotations

import json
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from curate.dedup.lsh import mix64
from filters.text_units import CJK_CHAR, has_cjk, is_cjk, units

PRIME = np.uint64(0x100000001B3)
#: at most this many items sharing one n-gram hash are checked on their text
MAX_ITEMS_PER_HASH = 32
#: the shared text quoted in a reject detail stops after this many units
MAX_SHARED_UNITS = 60


def normal_units(text: str) -> list[str]:
    """The text's units after normalisation: NFKC (full-width forms), casefold, no punctuation."""
    if text.isascii():
        return units(text.lower())
    return units(unicodedata.normalize("NFKC", text).casefold())


def join_units(us: Sequence[str]) -> str:
    """Units as readable text: a space between words, none between two CJK characters."""
    out: list[str] = []
    for i, u in enumerate(us):
        if i and not (CJK_CHAR.fullmatch(u) and CJK_CHAR.fullmatch(us[i - 1])):
            out.append(" ")
        out.append(u)
    return "".join(out)


def unit_hashes(unit_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """64-bit hashes of all units of all lists, concatenated; crc32 runs once per distinct unit."""
    import pandas as pd

    flat = [u for us in unit_lists for u in us]
    if not flat:
        return np.zeros(0, np.uint64)
    codes, uniques = pd.factorize(pd.Series(flat, dtype=object), sort=False)
    return mix64(np.fromiter((zlib.crc32(u.encode()) for u in uniques), np.uint64, len(uniques)))[codes]


def gram_hashes(w: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n-grams inside each list: (hash, list index, start unit) per n-gram.

    `w` is unit_hashes of the lists, `lengths` their lengths. An n-gram never spans two lists.
    """
    total = len(w)
    if total < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    h = np.zeros(total - n + 1, np.uint64)
    for k in range(n):  # h[i] = sum(w[i+k] * P^(n-1-k)) mod 2^64
        h = h * PRIME + w[k: total - n + 1 + k]
    inside = np.flatnonzero(owner[: total - n + 1] == owner[n - 1:])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    who = owner[inside]
    return mix64(h[inside] ^ np.uint64(n)), who, inside - starts[who]


# ---------------------------------------------------------------------- the index
@dataclass
class BenchmarkIndex:
    """What the workers share: n-gram hashes (sorted) with their items, a bitmap of the
    hashes' top bits, and per item its benchmark, key and normalised text (space-padded)."""

    hashes: np.ndarray  # uint64, sorted
    item_of: np.ndarray  # int32, the item of each hash
    bitmap: np.ndarray  # uint8, bit (h >> shift) set for every indexed hash
    shift: int
    items: pa.Table  # benchmark, key, text
    lengths: tuple[int, ...]  # the n-gram lengths the index holds (n and/or n_cjk)

    def __len__(self) -> int:
        return len(self.hashes)


def item_text(obj: dict[str, Any], fields: dict[str, str | None]) -> str:
    """A benchmark item's text: its question, its choices and its answer (when a string)."""
    parts: list[str] = []
    for role in ("question", "choices", "answer"):
        key = fields.get(role)
        value = obj.get(key) if key else None
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            parts += [str(v) for v in value if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        elif isinstance(value, str):
            parts.append(value)
        elif value is not None and role == "question":
            parts.append(str(value))
    return "\n".join(parts)


def read_benchmark(name: str, path: str, fields: dict[str, str | None]) -> list[tuple[str, str]]:
    """(key, text) of every item of a benchmark file: JSONL, a JSON array or Parquet (the
    manifest readers, so compressed files work too). The key is the `id` field, else the row."""
    from curate.manifest import read_lines

    out = []
    for raw in read_lines(name, path):
        try:
            obj = json.loads(raw["raw"])
        except ValueError as e:
            raise ValueError(f"benchmark {name}: {path} row {raw['line']} is not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"benchmark {name}: {path} row {raw['line']} is not an object")
        key = obj.get(fields["id"]) if fields.get("id") else None
        out.append((str(key) if key is not None else f"row {raw['line']}", item_text(obj, fields)))
    return out


def build_index(benchmarks: Sequence[tuple[str, Sequence[tuple[str, str]]]], n: int = 13,
                n_cjk: int = 30) -> tuple[BenchmarkIndex, dict[str, Any]]:
    """The index of the items of (benchmark name, [(key, text)]) and what it holds per benchmark.

    An item that is mostly CJK is indexed by n_cjk-grams, any other by n-grams; an item with
    fewer units than its n cannot be found and is counted as `short`."""
    names, keys, texts, unit_lists, ns = [], [], [], [], []
    stats: dict[str, Any] = {}
    for name, items in benchmarks:
        short = 0
        for key, text in items:
            us = normal_units(text)
            size = n_cjk if is_cjk(text) else n
            if len(us) < size:
                short += 1
                continue
            names.append(name)
            keys.append(key)
            texts.append(" " + " ".join(us) + " ")
            unit_lists.append(us)
            ns.append(size)
        stats[name] = {"items": len(items), "short": short}
    ns_arr = np.array(ns, np.int64)
    w = unit_hashes(unit_lists)
    lengths = np.array([len(us) for us in unit_lists], np.int64)
    all_h, all_item = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for size in sorted(set(ns)):
        h, who, _ = gram_hashes(w, lengths, size)
        keep = ns_arr[who] == size
        all_h.append(h[keep])
        all_item.append(who[keep])
    hashes, item_of = np.concatenate(all_h), np.concatenate(all_item).astype(np.int32)
    order = np.lexsort((item_of, hashes))
    hashes, item_of = hashes[order], item_of[order]
    if len(hashes):  # one entry per (hash, item)
        first = np.concatenate(([True], (hashes[1:] != hashes[:-1]) | (item_of[1:] != item_of[:-1])))
        hashes, item_of = hashes[first], item_of[first]
    # about 16 bits per hash: a window outside the index passes the bitmap 1 time in 16
    bits = max(20, int(np.ceil(np.log2(max(len(hashes), 1) * 16))))
    shift = 64 - bits
    bitmap = np.zeros(1 << (bits - 3), np.uint8)
    top = hashes >> np.uint64(shift)
    np.bitwise_or.at(bitmap, (top >> np.uint64(3)).astype(np.int64),
                     (np.uint8(1) << (top & np.uint64(7)).astype(np.uint8)))
    items = pa.table({"benchmark": pa.array(names, pa.string()), "key": pa.array(keys, pa.string()),
                      "text": pa.array(texts, pa.large_string())})
    return BenchmarkIndex(hashes, item_of, bitmap, shift, items, tuple(sorted(set(ns)))), stats


# ---------------------------------------------------------------------- lookups
@dataclass
class Overlap:
    text: int  # which of the texts looked up
    benchmark: str
    key: str
    shared: str  # the longest run of shared units from the first hit, as text


def find_overlaps(texts: Sequence[str], index: BenchmarkIndex) -> dict[int, Overlap]:
    """The first verified overlap of each text that has one (text position -> Overlap)."""
    unit_lists = [normal_units(t) for t in texts]
    w = unit_hashes(unit_lists)
    lengths = np.array([len(us) for us in unit_lists], np.int64)
    found: dict[int, Overlap] = {}
    n_words = min(index.lengths) if index.lengths else 0
    for size in index.lengths:
        if size == n_words:
            h, who, start = gram_hashes(w, lengths, size)
        else:  # the CJK length: only texts that hold CJK characters can match a CJK item
            pick = np.array([has_cjk(t) for t in texts], bool)
            if not pick.any():
                continue
            sub = np.flatnonzero(pick)
            h, who, start = gram_hashes(w[np.repeat(pick, lengths)], lengths[sub], size)
            who = sub[who]
        for i, s, lo, hi in _candidates(h, who, start, index):
            if i in found:
                continue
            hit = _verify(unit_lists[i], int(s), size, index, lo, hi)
            if hit is not None:
                found[i] = Overlap(i, *hit)
    return found


def _candidates(h: np.ndarray, who: np.ndarray, start: np.ndarray,
                index: BenchmarkIndex) -> list[tuple[int, int, int, int]]:
    """(text, start unit, first and end position in the index) of each window whose hash is
    indexed: the bitmap first, then a binary search for the few windows that pass it."""
    if not len(h) or not len(index.hashes):
        return []
    top = h >> np.uint64(index.shift)
    maybe = np.flatnonzero(index.bitmap[(top >> np.uint64(3)).astype(np.int64)]
                           & (np.uint8(1) << (top & np.uint64(7)).astype(np.uint8)))
    if not len(maybe):
        return []
    lo = np.searchsorted(index.hashes, h[maybe], side="left")
    hi = np.searchsorted(index.hashes, h[maybe], side="right")
    hit = hi > lo
    return list(zip(who[maybe][hit].tolist(), start[maybe][hit].tolist(), lo[hit].tolist(), hi[hit].tolist()))


def _verify(us: list[str], s: int, n: int, index: BenchmarkIndex, lo: int,
            hi: int) -> tuple[str, str, str] | None:
    """(benchmark, key, shared text) when the n units at `s` really occur in an item whose
    hash matched; the shared run is extended while the next unit still occurs there."""
    gram = us[s: s + n]
    texts = index.items.column("text")
    for item in index.item_of[lo: min(hi, lo + MAX_ITEMS_PER_HASH)].tolist():
        text = texts[item].as_py()
        if f" {' '.join(gram)} " not in text:
            continue  # a hash clash
        end = s + n
        while end < len(us) and end - s < MAX_SHARED_UNITS and f" {' '.join(us[s:end + 1])} " in text:
            end += 1
        shared = join_units(us[s:end]) + (" ..." if end - s >= MAX_SHARED_UNITS else "")
        return index.items.column("benchmark")[item].as_py(), index.items.column("key")[item].as_py(), shared
    return None
