"""De-duplication across the whole run: exact, near-duplicate text (MinHash LSH),
near-duplicate images (pHash) and repeated instructions about the same video.

How it runs on Ray (never a driver loop over rows):
1. map: per sample, the normalised text (NFKC, case-folded, whitespace collapsed), an exact
   key (text + media sha256s), a MinHash signature of word n-gram shingles, the pHash of
   every image, and a rank for the keep rule;
2. flat_map + groupby: every sample is emitted once per bucket key (exact key, each LSH
   band, optionally each pHash band, the video it asks about); each bucket of two or more
   samples is verified pairwise in its group task and yields duplicate edges;
3. one task unions the edges (connected components; only duplicates travel, not rows) and
   picks the sample to keep in each cluster;
4. map: the other members of each cluster become reject rows naming the kept sample.

What counts as a duplicate:
- exact_duplicate: same normalised text and the same media bytes;
- near_duplicate: estimated Jaccard of the shingle sets >= `threshold` and the same media
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
Keep rule: the sample of the source listed first in the recipe, then the smallest id. (Quality
scores cannot decide: LLM scoring runs after dedupe, so that no GPU time goes to duplicates.)
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from functools import lru_cache
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import pyarrow as pa

from curate.records import reject
from curate.stages.base import GlobalStage, Job, Resources, map_options

MAX_HASH = np.uint64((1 << 32) - 1)
EMPTY = np.uint64(1 << 40)  # marks a bin no shingle fell into (above any 32-bit value)
WORD_RE = re.compile(r"\w+")
PRIORITY = {"exact_duplicate": 0, "near_duplicate": 1, "near_duplicate_image": 2, "duplicate_video_instruction": 3}


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

    words = [WORD_RE.findall(t) for t in texts]
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
        for d in docs:  # the n-grams that start and end inside document d
            out[d] = np.unique(h[starts[d]: starts[d] + lengths[d] - n_eff + 1])
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
    if not empty.any():
        return
    cols = np.where(empty, 2 * k, np.arange(k))
    doubled = np.concatenate([cols, np.where(empty, 2 * k, np.arange(k) + k)], axis=1)
    nxt = np.minimum.accumulate(doubled[:, ::-1], axis=1)[:, ::-1][:, :k]  # next non-empty index >= j
    rows = np.flatnonzero(~empty.all(axis=1))
    r = rows[:, None]
    j = np.arange(k)[None, :]
    src = sig[r, nxt[rows] % k]
    dist = (nxt[rows] - j).astype(np.uint64)
    filled = (src + dist * np.uint64(0x5BD1E995)) & MAX_HASH
    sig[rows] = np.where(empty[rows], filled, sig[rows])


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
    words = WORD_RE.findall(normalise(text))
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


def bucket_edges(members: list[dict[str, Any]], key: str, threshold: float, k: int, use_phash: bool,
                 video_cosine: float, max_bucket: int = 400) -> list[dict[str, Any]]:
    """Verified duplicate edges among the samples that share one bucket key.

    Members are sorted by id; all pairs are checked, except in a bucket larger than
    `max_bucket`, where each member is checked against the first `max_bucket` only.
    """
    members = sorted(members, key=lambda m: m["id"])
    edges = []
    kind = key.split(":", 1)[0]
    for j in range(1, len(members)):
        for i in range(min(j, max_bucket)):
            a, b = members[i], members[j]
            if a["id"] == b["id"]:
                continue
            if kind == "x":
                reason, sim = "exact_duplicate", 1.0
            elif kind.startswith("b"):
                sim = jaccard_exact(a["shingles"], b["shingles"])
                if sim < threshold or not media_compatible(a["media"], b["media"], k, use_phash):
                    continue
                reason = "near_duplicate"
            elif kind.startswith("p"):
                if not media_compatible(a["media"], b["media"], k, True) or not all(m["kind"] == "image" for m in a["media"]):
                    continue
                reason, sim = "near_duplicate_image", 1.0
            else:  # "v": same video
                sim = cosine(a["vec"], b["vec"])
                if sim < video_cosine:
                    continue
                reason = "duplicate_video_instruction"
            edges.append({"u": a["id"], "v": b["id"], "reason": reason, "sim": round(sim, 4)})
    return edges


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def decide(edges: Iterable[dict[str, Any]], ranks: dict[str, tuple]) -> dict[str, dict[str, Any]]:
    """Connected components of the duplicate graph; all but the best-ranked member leave."""
    uf = UnionFind()
    best_edge: dict[str, tuple[int, float]] = {}
    for e in edges:
        uf.union(e["u"], e["v"])
        for node in (e["u"], e["v"]):
            cand = (PRIORITY[e["reason"]], -e["sim"])
            if node not in best_edge or cand < best_edge[node]:
                best_edge[node] = cand
    clusters: dict[Any, list[str]] = {}
    for node in list(uf.parent):
        clusters.setdefault(uf.find(node), []).append(node)
    reasons = {v: k for k, v in PRIORITY.items()}
    out = {}
    for members in clusters.values():
        keep = min(members, key=lambda m: ranks[m])
        for m in members:
            if m != keep:
                prio, neg_sim = best_edge[m]
                out[m] = {"reason": reasons[prio], "kept": keep, "sim": -neg_sim, "size": len(members)}
    return out


# ----------------------------------------------------------------------------- single-process API
def near_duplicate_clusters(texts: Sequence[str], threshold: float = 0.8, *, num_perm: int = 128,
                            shingle: int = 5) -> list[int]:
    """Cluster label per text (the smallest index of its cluster), same algorithm as the stage."""
    hashes = shingle_hashes_batch([normalise(t) for t in texts], shingle)
    sig = signatures_from_hashes(hashes, num_perm)
    bands, rows = lsh_params(threshold, num_perm)
    hb = band_hashes(sig, bands, rows)
    has_text = np.array([len(h) > 0 for h in hashes])
    edges = []
    for band in range(bands):  # buckets = runs of equal band hashes after a sort
        docs = np.flatnonzero(has_text)
        order = docs[np.argsort(hb[docs, band], kind="stable")]
        values = hb[order, band]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(values)) + 1))
        ends = np.concatenate((starts[1:], [len(values)]))
        for a, b in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            group = order[a:b]
            members = [{"id": f"{i:012d}", "shingles": hashes[i], "media": []} for i in group.tolist()]
            edges += bucket_edges(members, f"b{band}", threshold, 0, False, 1.0)
    uf = UnionFind()
    for e in edges:
        uf.union(int(e["u"]), int(e["v"]))
    return [uf.find(i) if i in uf.parent else i for i in range(len(texts))]


# ----------------------------------------------------------------------------- the Ray stage
FEATURES = pa.schema([("id", pa.string()), ("exact", pa.string()), ("sig", pa.binary()),
                      ("shingles", pa.binary()), ("media", pa.string()), ("rank", pa.string()),
                      ("question", pa.string())])


def _features(batch: pa.Table, cfg: dict[str, Any], source_order: dict[str, int]) -> pa.Table:
    """Per alive sample: exact key, MinHash signature, shingle hashes, media identity, rank."""
    rows = [r for r in batch.to_pylist() if r.get("reject_reason") is None]
    norm = [normalise(sample_text(r.get("conversations"))) for r in rows]
    hashes = shingle_hashes_batch(norm, cfg["shingle"])
    sigs = signatures_from_hashes(hashes, cfg["num_perm"])
    out: dict[str, list[Any]] = {name: [] for name in FEATURES.names}
    for r, text, h, sig in zip(rows, norm, hashes, sigs):
        media = []
        for m in r.get("media") or []:
            ph = phash_int(m["path"]) if cfg["near_image"] and m["kind"] == "image" and m.get("path") else None
            media.append({"kind": m["kind"], "sha": m.get("sha256") or m.get("ref"), "ph": ph})
        media_key = ",".join(m["sha"] or "" for m in media)
        out["id"].append(r["id"])
        out["exact"].append(hashlib.sha256(f"{text}\x00{media_key}".encode()).hexdigest())
        out["sig"].append(sig.tobytes() if text else b"")
        out["shingles"].append(h.astype(np.uint32).tobytes())
        out["media"].append(json.dumps(media))
        out["rank"].append(json.dumps([source_order.get(r["source"], 1 << 30), r["id"]]))
        out["question"].append(next((t["value"] for t in r.get("conversations") or [] if t["from"] == "human"), ""))
    return pa.table(out, schema=FEATURES)


def _explode(row: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per bucket key the sample falls in (the signature itself stays behind)."""
    media = json.loads(row["media"])
    keys = []
    if cfg["exact"]:
        keys.append("x:" + row["exact"])
    if cfg["near_text"] and row["sig"]:
        keys += band_keys(np.frombuffer(row["sig"], np.uint32), cfg["bands"], cfg["rows"])
    if cfg["image_only"] and media and all(m["kind"] == "image" and m["ph"] is not None for m in media):
        keys += phash_bands(media[0]["ph"], cfg["image_hamming"])
    if cfg["video_instructions"]:
        keys += sorted({f"v:{m['sha']}" for m in media if m["kind"] == "video"})
    keep = {k: row[k] for k in ("id", "shingles", "media", "rank", "question")}
    return [{"key": k, **keep} for k in keys]


KEYS = pa.schema([("key", pa.string())] + [FEATURES.field(n) for n in ("id", "shingles", "media", "rank", "question")])


def _explode_batch(batch: pa.Table, cfg: dict[str, Any]) -> pa.Table:
    """_explode over a batch, with a fixed schema even when no key comes out."""
    return pa.Table.from_pylist([k for row in batch.to_pylist() for k in _explode(row, cfg)], schema=KEYS)


def _group_edges(group: pa.Table, cfg: dict[str, Any]) -> pa.Table:
    empty = pa.table({"u": pa.array([], pa.string()), "v": pa.array([], pa.string()),
                      "reason": pa.array([], pa.string()), "sim": pa.array([], pa.float64()),
                      "ru": pa.array([], pa.string()), "rv": pa.array([], pa.string())})
    if len(group) < 2:
        return empty
    key = group.column("key")[0].as_py()
    members = [{"id": r["id"], "shingles": np.frombuffer(r["shingles"], np.uint32), "media": json.loads(r["media"]),
                "vec": hashing_vector(r["question"]) if key.startswith("v:") else None, "rank": r["rank"]}
               for r in group.to_pylist()]
    rank = {m["id"]: m["rank"] for m in members}
    edges = bucket_edges(members, key, cfg["threshold"], cfg["image_hamming"], cfg["near_image"],
                         cfg["video_cosine"])
    if not edges:
        return empty
    return pa.table({"u": [e["u"] for e in edges], "v": [e["v"] for e in edges],
                     "reason": [e["reason"] for e in edges], "sim": [e["sim"] for e in edges],
                     "ru": [rank[e["u"]] for e in edges], "rv": [rank[e["v"]] for e in edges]})


def _decide_task(edge_blocks: list[Any]) -> dict[str, dict[str, Any]]:
    import ray

    tables = [t for t in ray.get(list(edge_blocks)) if len(t)]
    if not tables:
        return {}
    edges = pa.concat_tables(tables).to_pylist()
    ranks: dict[str, tuple] = {}
    for e in edges:
        ranks[e["u"]] = tuple(json.loads(e["ru"]))
        ranks[e["v"]] = tuple(json.loads(e["rv"]))
    return decide(edges, ranks)


def _mark(batch: pa.Table, decisions_ref: list[Any]) -> pa.Table:
    import ray

    decisions = ray.get(decisions_ref[0])
    if not decisions:
        return batch
    rows = batch.to_pylist()
    for r in rows:
        d = decisions.get(r["id"])
        if d and r.get("reject_reason") is None:
            reject(r, "dedupe", d["reason"],
                   f"duplicate of {d['kept']} (similarity {d['sim']:.2f}, cluster of {d['size']})")
    return pa.Table.from_pylist(rows, schema=batch.schema)


class DedupeStage(GlobalStage):
    name: ClassVar[str] = "dedupe"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=1024)

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
        bands, rows = lsh_params(c.threshold, c.num_perm)
        return {"exact": c.exact, "near_text": c.near_text, "threshold": c.threshold, "num_perm": c.num_perm,
                "shingle": c.shingle, "bands": bands, "rows": rows, "near_image": c.near_image,
                "image_hamming": c.image_hamming, "image_only": bool(opts.get("image_only", False)),
                "video_instructions": bool(opts.get("video_instructions", True)),
                "video_cosine": float(opts.get("video_instruction_cosine", 0.9))}

    def validate(self) -> None:
        self.settings()

    def fingerprint(self) -> dict[str, Any]:
        # the keep rule prefers the source listed first, so the order of sources matters
        return super().fingerprint() | {"source_order": list(self.ctx.sources)}

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        import ray

        cfg = self.settings()
        order = {name: i for i, name in enumerate(self.ctx.sources)}
        opts = map_options(job.resources, actor=False)
        feats = ds.map_batches(_features, **opts, fn_kwargs={"cfg": cfg, "source_order": order})
        keys = feats.map_batches(_explode_batch, **opts, fn_kwargs={"cfg": cfg})
        # a few shuffle partitions per CPU: enough parallelism, without hundreds of tiny tasks
        partitions = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        edges = keys.groupby("key", num_partitions=partitions).map_groups(
            _group_edges, batch_format="pyarrow", fn_kwargs={"cfg": cfg})
        decisions = ray.remote(_decide_task).remote(edges.to_arrow_refs())
        return ds.map_batches(_mark, **opts, fn_kwargs={"decisions_ref": [decisions]}), {}
