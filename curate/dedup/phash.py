"""Perceptual hashes of images (pHash, 64 bits) and their Hamming-distance buckets.

pHash keeps the low frequencies of the image's discrete cosine transform, so a resized,
re-encoded or slightly edited copy lands within a few bits of the original. Two hashes within
Hamming distance k agree on at least one of k + 1 disjoint bit segments (pigeonhole), so the
segments serve as exact bucket keys that never miss such a pair.
"""

from __future__ import annotations

_PHASH_CACHE: dict[str, int | None] = {}


def phash_int(path: str) -> int | None:
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(str(imagehash.phash(img)), 16)
    # unreadable here means the media stage let it through: never crash dedupe
    except Exception:  # noqa: BLE001
        return None


def phash_cached(path: str) -> int | None:
    """pHash of a file, cached per worker process: many samples ask about the same picture."""
    if path not in _PHASH_CACHE:
        if len(_PHASH_CACHE) > 100_000:
            _PHASH_CACHE.clear()
        _PHASH_CACHE[path] = phash_int(path)
    return _PHASH_CACHE[path]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def phash_bands(h: int, k: int) -> list[str]:
    """k+1 disjoint bit segments: two hashes within Hamming k agree on at least one."""
    parts = k + 1
    edges = [round(64 * i / parts) for i in range(parts + 1)]
    return [f"p{i}:{(h >> edges[i]) & ((1 << (edges[i + 1] - edges[i])) - 1):x}" for i in range(parts)]
