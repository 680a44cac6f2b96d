"""De-duplication across the whole run: exact, near-duplicate text (MinHash LSH),
near-duplicate images (pHash) and repeated instructions about the same video.

How it runs on Ray (never a driver loop over rows, memory independent of cluster size):
1. map: per sample, the normalised text (NFKC, case-folded, whitespace collapsed), its bucket
   keys (exact text + media sha256s, each LSH band, optionally each pHash band, the video it
   asks about), the shingle hashes, the media identity and the keep-rule order;
2. one task plans on compact arrays (8-byte keys and ranks, no row payload): in every bucket
   the members, ordered by the keep rule, are paired with its first ANCHORS members, so a
   bucket of n samples gives at most ANCHORS x n candidate pairs (as the MinHash LSH
   deduplicators of DataTrove and NeMo Curator link members to the bucket's first id);
3. shuffle: one task per features block sends the features of paired samples to a few
   verification partitions, and one task per partition verifies all its pairs at once
   (vectorised exact Jaccard, media, pHash, video cosine);
4. one task takes the connected components of the verified edges on compact integer ids
   (scipy.sparse.csgraph) and picks the sample to keep in each cluster;
5. map: the other members of each cluster become reject rows naming the kept sample.

What counts as a duplicate:
- exact_duplicate: same normalised text and the same media bytes;
- near_duplicate: estimated Jaccard of the shingle sets >= `threshold` (`threshold_cjk` when
  both texts are mostly Chinese or Japanese, see below) and the same media
  (same bytes, or for images a pHash Hamming distance <= `image_hamming`). A different
  picture with the same generic question is not a duplicate;
- near_duplicate_image (options.image_only=true, for captioning corpora): every image of
  the two samples is within `image_hamming`, whatever the text;
- duplicate_video_instruction (Baichuan-omni): two questions about the same video whose
  word uni+bigram hashing vectors have cosine >= options.video_instruction_cosine (0.9).

LSH bands and rows are chosen from the threshold recall-first: a pair at the threshold
becomes a candidate with probability >= 0.99, and among such splits the one with the least
false-positive mass is taken (128 bins, threshold 0.8: 16 bands x 6 rows). Candidates
are then verified with the exact Jaccard of their shingle-hash sets, so extra candidates
cost time, not precision.
Chinese and Japanese texts (most units CJK characters, curate.text_units.is_cjk) are shingled
in character n-grams (`shingle`) and compared at `threshold_cjk` (0.6), with LSH bands chosen for it; their
band keys are salted, so they only ever share a bucket with other mostly-CJK texts, and
English (or any spaced-script) results are exactly those of `threshold` alone. Why a lower
threshold: one inserted word or clause of k units in an n-unit text leaves a Jaccard of
(n - 8) / (n + k) with 5-gram shingles; a Chinese clause is about 13 characters (the median
between two punctuation marks in the Chinese edition of Dive into Deep Learning) and a
paragraph often 50-120, so at 0.8 only about 75% of such near copies were found in 2,000
real paragraphs of that book, at 0.6 over 99%, while no two distinct paragraphs of it had a
Jaccard above 0.46 (tests/bench/bench_zh.py).
Keep rule: the sample of the source listed first in the recipe, then the smallest id. (Quality
scores cannot decide: LLM scoring runs after dedupe, so that no GPU time goes to duplicates.)
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
import zlib
from functools import lru_cache
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import pyarrow as pa

from curate.records import reject
from curate.stages.base import GlobalStage, Job, Resources
from curate.text_units import is_cjk, units

MAX_HASH = np.uint64((1 << 32) - 1)
EMPTY = np.uint64(1 << 40)  # marks a bin no shingle fell into (above any 32-bit value)


# ----------------------------------------------------------------------------- text and MinHash
def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def sample_text(conversations: Iterable[dict[str, Any]] | None) -> str:
    return "\n".join(t["value"] for t in conversations or [] if t.get("value"))


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


def jaccard_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted, unique shingle-hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


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
            fp = _integrate(lambda s: 1 - (1 - s ** rows) ** bands, 0.0, threshold)
            if fp < best_fp:
                best, best_fp = (bands, rows), fp
    return best


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64: one polynomial hash of each band's `rows` signature values."""
    sig = np.atleast_2d(sig).astype(np.uint64)
    h = np.zeros((sig.shape[0], bands), np.uint64)
    view = sig[:, : bands * rows].reshape(sig.shape[0], bands, rows)
    for r in range(rows):
        h = h * np.uint64(0x100000001B3) + view[:, :, r]
    h ^= h >> np.uint64(33)
    return h


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[str]:
    return [f"b{i}:{h:016x}" for i, h in enumerate(band_hashes(sig, bands, rows)[0].tolist())]


# ----------------------------------------------------------------------------- images and instructions
def phash_int(path: str) -> int | None:
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(str(imagehash.phash(img)), 16)
    except Exception:  # unreadable here means the media stage let it through; never crash dedupe
        return None


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def phash_bands(h: int, k: int) -> list[str]:
    """k+1 disjoint bit segments: two hashes within Hamming k agree on at least one."""
    parts = k + 1
    edges = [round(64 * i / parts) for i in range(parts + 1)]
    return [f"p{i}:{(h >> edges[i]) & ((1 << (edges[i + 1] - edges[i])) - 1):x}" for i in range(parts)]


def hashing_vector(text: str, dims: int = 1 << 18) -> dict[int, float]:
    words = units(normalise(text))
    grams = words + [f"{x} {y}" for x, y in zip(words, words[1:])]
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


# ----------------------------------------------------------------------------- shared verification
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


# ----------------------------------------------------------------------------- the text unit
def text_units(texts: Sequence[str], n: int) -> tuple[list[str], list[np.ndarray]]:
    """The normalised texts and their shingle hashes (sorted, unique uint32 per text).

    The one place that decides what a text's units are: word n-grams, and character n-grams
    inside CJK runs (Chinese has no spaces; one inserted word must change few shingles).
    """
    norm = [normalise(t) for t in texts]
    return norm, shingle_hashes_batch(norm, n)


# ----------------------------------------------------------------------------- bucket keys
KINDS = ("exact_duplicate", "near_duplicate", "near_duplicate_image", "duplicate_video_instruction")
PRIORITY = {name: i for i, name in enumerate(KINDS)}  # lower wins when a pair has several reasons
EXACT, NEAR, IMAGE, VIDEO = range(4)
ANCHORS = 3  # members of a bucket are verified against its first ANCHORS members (by keep rank)
_LOW62 = np.uint64((1 << 62) - 1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of uint64 values."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def with_kind(h: np.ndarray, kind: int) -> np.ndarray:
    """A bucket key: 62 bits of hash, the bucket kind in the top two bits."""
    return (np.asarray(h, np.uint64) & _LOW62) | np.uint64(kind << 62)


CJK_SALT = 1 << 20  # added to the band index of mostly-CJK texts: their buckets are their own


def band_bucket_keys(hb: np.ndarray, salt: int = 0) -> np.ndarray:
    """(n_docs, bands) bucket keys of LSH band hashes; the band index (plus `salt`) is mixed in."""
    offsets = (np.arange(1, hb.shape[1] + 1, dtype=np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    return with_kind(_mix64(hb ^ offsets[None, :]), NEAR)


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


def lsh_settings(threshold: float, threshold_cjk: float, num_perm: int) -> dict[str, Any]:
    bands, rows = lsh_params(threshold, num_perm)
    bands_cjk, rows_cjk = lsh_params(threshold_cjk, num_perm)
    return {"threshold": threshold, "threshold_cjk": threshold_cjk, "bands": bands, "rows": rows,
            "bands_cjk": bands_cjk, "rows_cjk": rows_cjk}


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------- candidates and verification
def candidate_pairs(keys: np.ndarray, docs: np.ndarray, rank: np.ndarray, anchors: int = ANCHORS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate duplicate pairs (member, anchor, kind) from bucket keys, linear in bucket size.

    `keys[i]` is a bucket key of document `docs[i]` (a document has many). In every bucket the
    documents are ordered by `rank` (the keep rule); each member is paired with the bucket's
    first `anchors` documents only (as MinHash LSH deduplicators link members to the bucket's
    smallest id), so a bucket of n documents gives at most anchors x n pairs, never n^2.
    A pair found in several buckets of one kind is kept once (the same pair may come back
    under another kind, e.g. a shared LSH band and the same video: each is verified its own way).
    """
    empty = np.zeros(0, np.int64)
    if len(keys) < 2:
        return empty, empty, np.zeros(0, np.int8)
    order = np.lexsort((rank[docs], keys))
    k, d = keys[order], docs[order]
    new = np.empty(len(k), bool)
    new[0] = True
    np.not_equal(k[1:], k[:-1], out=new[1:])
    run_start = np.flatnonzero(new)
    run_id = np.cumsum(new) - 1
    pos = np.arange(len(k)) - run_start[run_id]
    us, vs, kinds = [], [], []
    for a in range(anchors):
        sel = np.flatnonzero(pos > a)
        if not len(sel):
            break
        anchor = d[run_start[run_id[sel]] + a]
        keep = anchor != d[sel]  # a document listed twice under one key is not its own duplicate
        us.append(d[sel][keep])
        vs.append(anchor[keep])
        kinds.append((k[sel][keep] >> np.uint64(62)).astype(np.int8))
    if not us:
        return empty, empty, np.zeros(0, np.int8)
    u, v, kind = np.concatenate(us), np.concatenate(vs), np.concatenate(kinds)
    n = np.int64(max(int(docs.max()) + 1, 1))
    code = u.astype(np.int64) * n + v.astype(np.int64)
    order = np.lexsort((kind, code))
    code, kind, u, v = code[order], kind[order], u[order], v[order]
    first = np.ones(len(code), bool)  # one pair per (pair, kind): each kind is verified its own way
    first[1:] = (code[1:] != code[:-1]) | (kind[1:] != kind[:-1])
    # an exact duplicate always verifies: its near-duplicate candidacy need not be checked
    first[1:] &= ~((kind[1:] == NEAR) & (kind[:-1] == EXACT) & (code[1:] == code[:-1]))
    return u[first].astype(np.int64), v[first].astype(np.int64), kind[first]


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
            ok[i] = a == b or media_compatible(json.loads(a), json.loads(b), cfg["image_hamming"], cfg["near_image"])
    for i in np.flatnonzero(kind == IMAGE).tolist():
        ma, mb = json.loads(media[u[i]]), json.loads(media[v[i]])
        ok[i] = media_compatible(ma, mb, cfg["image_hamming"], True) and all(m["kind"] == "image" for m in ma)
    for i in np.flatnonzero(kind == VIDEO).tolist():
        sim[i] = cosine(hashing_vector(questions[u[i]]), hashing_vector(questions[v[i]]))
        ok[i] = sim[i] >= cfg["video_cosine"]
    return ok, sim


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


# ----------------------------------------------------------------------------- single-process API
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


# ----------------------------------------------------------------------------- the Ray stage
FEATURES = pa.schema([("id", pa.string()), ("order", pa.int32()), ("keys", pa.list_(pa.uint64())),
                      ("shingles", pa.binary()), ("cjk", pa.bool_()), ("media", pa.string()),
                      ("question", pa.string())])
ROUTED = pa.schema([("part", pa.int32()), ("node", pa.int64()), ("shingles", pa.binary()), ("cjk", pa.bool_()),
                    ("media", pa.string()), ("question", pa.string())])
KEYS = pa.schema([FEATURES.field(n) for n in ("id", "order", "keys")])
EDGES = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.int8()), ("sim", pa.float64())])
_PHASH_CACHE: dict[str, int | None] = {}


def _phash_cached(path: str) -> int | None:
    """pHash of a file, cached per worker process: many samples ask about the same picture."""
    if path not in _PHASH_CACHE:
        if len(_PHASH_CACHE) > 100_000:
            _PHASH_CACHE.clear()
        _PHASH_CACHE[path] = phash_int(path)
    return _PHASH_CACHE[path]


def _features(batch: pa.Table, cfg: dict[str, Any], source_order: dict[str, int]) -> pa.Table:
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
            ph = (_phash_cached(m["path"]) if cfg["near_image"] and m["kind"] == "image" and m.get("path") else None)
            media.append({"kind": m["kind"], "sha": m.get("sha256") or m.get("ref"), "ph": ph})
        row_keys: list[int] = []
        if cfg["exact"]:
            media_key = ",".join(m["sha"] or "" for m in media)
            row_keys.append(_hash64(f"{text}\x00{media_key}") & ((1 << 62) - 1))
        if bands is not None and has_text[i]:
            row_keys += bands[i].tolist()
        if cfg["image_only"] and media and all(m["kind"] == "image" and m["ph"] is not None for m in media):
            row_keys += [(_hash64(k) & ((1 << 62) - 1)) | (IMAGE << 62) for k in phash_bands(media[0]["ph"], cfg["image_hamming"])]
        if cfg["video_instructions"]:
            row_keys += [(_hash64(k) & ((1 << 62) - 1)) | (VIDEO << 62)
                         for k in sorted({m["sha"] or "" for m in media if m["kind"] == "video"})]
        keys.append(row_keys)
        media_out.append(json.dumps(media) if media else "[]")
        questions.append(next((t["value"] for t in conv or [] if t["from"] == "human"), "") or "")
    order = [source_order.get(s, 1 << 30) for s in batch.column("source").to_pylist()]
    return pa.table({"id": batch.column("id"), "order": pa.array(order, pa.int32()),
                     "keys": pa.array(keys, pa.list_(pa.uint64())),
                     "shingles": [h.astype(np.uint32).tobytes() for h in hashes], "cjk": cjk,
                     "media": media_out, "question": questions}, schema=FEATURES)


def _plan(partitions: int, *key_blocks: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, int]:
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
    keys_col = table.column("keys").chunk(0) if table.column("keys").num_chunks else pa.array([], pa.list_(pa.uint64()))
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


def _route(block: pa.Table, route: pa.Table, partitions: int) -> list[pa.Table]:
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
    routed = pa.table({"part": part, "node": r.column("node").take(rep), "shingles": rows.column("shingles"),
                       "cjk": rows.column("cjk"), "media": rows.column("media"), "question": rows.column("question")},
                      schema=ROUTED)
    part_np = part.to_numpy()
    return [routed.filter(pa.array(part_np == p)) for p in range(partitions)]


def _verify_task(pairs: pa.Table, cfg: dict[str, Any], part: int, *pieces: pa.Table) -> pa.Table:
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


def _decide(nodes: pa.Table, *edge_blocks: pa.Table) -> pa.Table:
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


def _mark(batch: pa.Table, decisions: Any) -> pa.Table:
    """Reject the rows named in the decisions (a Shared table; vectorised lookup by id)."""
    import pyarrow.compute as pc

    decisions = decisions.value()
    if not len(decisions) or not len(batch):
        return batch
    pos = pc.index_in(batch.column("id"), value_set=decisions.column("id"))
    hit = pc.and_(pc.is_valid(pos), pc.is_null(batch.column("reject_reason")))
    if not pc.any(hit).as_py():
        return batch
    def col(name: str, values: pa.Array) -> pa.Array:
        old = batch.column(name)
        return pc.if_else(hit, values.cast(old.type), old)
    reason = decisions.column("reason").take(pos)
    detail = pc.utf8_slice_codeunits(decisions.column("detail").take(pos), 0, 2000)
    stage = pa.array(["dedupe"] * len(batch), pa.string())
    batch = batch.set_column(batch.schema.get_field_index("reject_stage"), "reject_stage", col("reject_stage", stage))
    batch = batch.set_column(batch.schema.get_field_index("reject_reason"), "reject_reason", col("reject_reason", reason))
    return batch.set_column(batch.schema.get_field_index("reject_detail"), "reject_detail", col("reject_detail", detail))


class DedupeStage(GlobalStage):
    name: ClassVar[str] = "dedupe"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=1024)
    ctx_keys: ClassVar[tuple[str, ...]] = ("source_order",)  # the keep rule prefers the source listed first

    def inputs(self) -> list[str]:
        return ["conversations", "media"]

    def settings(self) -> dict[str, Any]:
        c = self.config
        opts = dict(c.options)
        unknown = set(opts) - {"image_only", "video_instructions", "video_instruction_cosine"}
        if unknown:
            raise ValueError(f"stages.dedupe.options: unknown keys {sorted(unknown)}")
        if c.num_perm & (c.num_perm - 1):
            raise ValueError(f"stages.dedupe.num_perm must be a power of two, got {c.num_perm}")
        return {"exact": c.exact, "near_text": c.near_text, "num_perm": c.num_perm, "shingle": c.shingle,
                **lsh_settings(c.threshold, c.threshold_cjk, c.num_perm), "near_image": c.near_image,
                "image_hamming": c.image_hamming, "image_only": bool(opts.get("image_only", False)),
                "video_instructions": bool(opts.get("video_instructions", True)),
                "video_cosine": float(opts.get("video_instruction_cosine", 0.9))}

    def validate(self) -> None:
        self.settings()

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        ex = job.executor
        cfg = self.settings()
        order = {name: i for i, name in enumerate(self.ctx.sources)}
        feats = ex.dataset(ex.blocks(ex.map(ds, _features, job.resources, cfg=cfg, source_order=order)))
        # partitions of the verification: a few per CPU, more when the corpus is large
        partitions = max(2 * ex.cpus(), feats.count() // 200_000)
        key_blocks = ex.blocks(feats.select_columns(["id", "order", "keys"]))
        route, pairs, nodes, n_pairs = ex.remote(_plan, num_returns=4)(partitions, *key_blocks)
        n_pairs = int(ex.get(n_pairs))
        if n_pairs:
            # a direct shuffle: each features block splits into its partitions (one task per
            # block), then one task per partition verifies its pairs; Ray Data's groupby
            # would sort the routed rows first and sample them for its boundaries
            split = ex.remote(_route, num_returns=partitions)
            pieces = [split(block, route, partitions) for block in ex.blocks(feats)]
            verify = ex.remote(_verify_task)
            edges = [verify(pairs, cfg, p, *[block[p] for block in pieces]) for p in range(partitions)]
            decisions = ex.share(ex.remote(_decide)(nodes, *edges))
        else:
            decisions = ex.share(pa.table({"id": pa.array([], pa.string()), "reason": pa.array([], pa.string()),
                                           "detail": pa.array([], pa.string())}))
        return ex.map(ds, _mark, job.resources, decisions=decisions), {"candidate_pairs": n_pairs}
