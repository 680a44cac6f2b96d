"""Synthetic packing workloads with realistic (n_tokens, n_tiles) distributions.

Used by the packing benchmark and tests. Images follow the InternVL tile rule on random
aspect ratios (packing.tiles), videos sample 8-32 frames (one tile each), text lengths are
log-normal with a long tail; every item is clipped to the budgets so it is packable.
"""

from __future__ import annotations

import numpy as np

from packing.tiles import choose_grid

MIXES = {  # share of text, single image, multi image, video
    "image-heavy": (0.20, 0.60, 0.12, 0.08),
    "video-heavy": (0.25, 0.20, 0.05, 0.50),
    "text-only": (1.0, 0.0, 0.0, 0.0),
}


def _image_tiles(rng: np.random.Generator, n_max: int) -> int:
    w = int(rng.integers(200, 2400))
    h = int(w / np.exp(rng.normal(0.0, 0.6)))
    cols, rows = choose_grid(w, max(h, 16), n_max, 1, 448)
    return cols * rows + (1 if cols * rows > 1 else 0)


def _text_tokens(rng: np.random.Generator, median: float, sigma: float = 0.9) -> int:
    return int(max(8, rng.lognormal(np.log(median), sigma)))


def make_workload(mix: str, n: int, max_tokens: int, max_tiles: int, seed: int = 0,
                  tokens_per_tile: int = 256) -> list[tuple[int, int]]:
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; known: {sorted(MIXES)}")
    rng = np.random.default_rng(seed)
    kinds = rng.choice(4, size=n, p=MIXES[mix])
    items = []
    for kind in kinds:
        if kind == 0:
            tok, til = _text_tokens(rng, 450), 0
        elif kind == 1:
            til = _image_tiles(rng, 12)
            tok = til * tokens_per_tile + _text_tokens(rng, 120)
        elif kind == 2:
            til = sum(_image_tiles(rng, 4) for _ in range(int(rng.integers(2, 6))))
            tok = til * tokens_per_tile + _text_tokens(rng, 200)
        else:
            til = int(rng.integers(8, 33))
            tok = til * tokens_per_tile + _text_tokens(rng, 150)
        til = min(til, max_tiles)
        tok = min(max(tok, til * tokens_per_tile), max_tokens)
        items.append((tok, til))
    return items
