"""Bucket keys and candidate pairs: which samples are compared at all.

Every sample gets 64-bit bucket keys (62 bits of hash, the duplicate kind in the top two
bits): its exact text and media, each LSH band (curate.dedup.lsh), each pHash segment
(curate.dedup.phash), the video it asks about. Samples that share a key become candidate
pairs. Within a bucket, ordered by the keep rule, each member is paired with the first
ANCHORS members only, as the MinHash LSH deduplicators of DataTrove and NeMo Curator link
a bucket's members to its first id: a bucket of n samples gives at most ANCHORS x n pairs,
never n^2, and the transitive closure (curate.dedup.components) still joins the cluster.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from curate.dedup.phash import phash_bands

# the duplicate kinds, in the order that decides a node's reported reason (lower wins)
KINDS = ("exact_duplicate", "near_duplicate", "near_duplicate_image", "duplicate_video_instruction")
EXACT, NEAR, IMAGE, VIDEO = range(4)
ANCHORS = 3  # members of a bucket are verified against its first ANCHORS members (by keep rank)
_LOW62 = np.uint64((1 << 62) - 1)


def with_kind(h: np.ndarray, kind: int) -> np.ndarray:
    """A bucket key: 62 bits of hash, the bucket kind in the top two bits."""
    return (np.asarray(h, np.uint64) & _LOW62) | np.uint64(kind << 62)


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def key_of(text: str, kind: int) -> int:
    """The bucket key of a string (exact text and media, a pHash segment, a video)."""
    return (hash64(text) & ((1 << 62) - 1)) | (kind << 62)


def sample_keys(text: str, media: list[dict[str, Any]], bands: np.ndarray | None, cfg: dict[str, Any]
                ) -> list[int]:
    """The bucket keys of one sample: its normalised `text` with its media bytes (exact), its
    LSH band keys `bands` (None: none), its images' pHash segments (image_only corpora) and the
    videos it asks about. `media` holds the sample's {kind, sha, ph} (ph: pHash or None)."""
    keys: list[int] = []
    if cfg["exact"]:
        media_key = ",".join(m["sha"] or "" for m in media)
        keys.append(key_of(f"{text}\x00{media_key}", EXACT))
    if bands is not None:
        keys += bands.tolist()
    if cfg["image_only"] and media and all(m["kind"] == "image" and m["ph"] is not None for m in media):
        keys += [key_of(k, IMAGE) for k in phash_bands(media[0]["ph"], cfg["image_hamming"])]
    if cfg["video_instructions"]:
        keys += [key_of(k, VIDEO) for k in sorted({m["sha"] or "" for m in media if m["kind"] == "video"})]
    return keys


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
