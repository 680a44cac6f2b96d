"""2D packing: place (n_tokens, n_tiles) items into sequences under both budgets at once.

First version: best-fit decreasing on a combined size (each budget normalised to 1), with
the open sequences kept in a list and searched for the fullest one that still fits both
budgets. Deterministic (ties broken by item index). The packing-v2 issue replaces it with
a faster, closer-to-optimal packer behind the same signature.
"""

from __future__ import annotations

from typing import Sequence


def _check(items: Sequence[tuple[int, int]], max_tokens: int, max_tiles: int) -> None:
    if max_tokens <= 0 or max_tiles < 0:
        raise ValueError(f"budgets must be positive, got max_tokens={max_tokens}, max_tiles={max_tiles}")
    for i, (tok, til) in enumerate(items):
        if tok < 0 or til < 0:
            raise ValueError(f"item {i} has negative size ({tok} tokens, {til} tiles)")
        if tok > max_tokens or til > max_tiles:
            raise ValueError(f"item {i} ({tok} tokens, {til} tiles) exceeds the budget "
                             f"({max_tokens} tokens, {max_tiles} tiles); split or truncate it first")


def pack_2d(items: Sequence[tuple[int, int]], max_tokens: int, max_tiles: int, **options) -> list[list[int]]:
    """Bins of item indices; every index exactly once; every bin within both budgets."""
    if options:
        raise TypeError(f"unknown pack_2d options: {sorted(options)}")
    _check(items, max_tokens, max_tiles)
    tile_budget = max(max_tiles, 1)
    order = sorted(range(len(items)),
                   key=lambda i: (-(items[i][0] / max_tokens + items[i][1] / tile_budget), i))
    bins: list[list[int]] = []
    used: list[list[int]] = []  # [tokens, tiles] per bin
    for i in order:
        tok, til = items[i]
        best, best_fill = -1, -1.0
        for b, (bt, bg) in enumerate(used):
            if bt + tok <= max_tokens and bg + til <= max_tiles:
                fill = (bt + tok) / max_tokens + (bg + til) / tile_budget
                if fill > best_fill:
                    best, best_fill = b, fill
        if best < 0:
            bins.append([i])
            used.append([tok, til])
        else:
            bins[best].append(i)
            used[best][0] += tok
            used[best][1] += til
    return [sorted(b) for b in bins]
