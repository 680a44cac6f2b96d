"""2D packing: place (n_tokens, n_tiles) items into sequences under both budgets at once.

This is 2D vector bin packing. The lower bound on the number of sequences (bins) is
    LB = max(ceil(sum tokens / l_max), ceil(sum tiles / t_max)),
and the packer aims to land within 1-2% of it on realistic SFT mixes.

Algorithm ("bin-centric dot product", Panigrahy et al., *Heuristics for Vector Bin Packing*):
1. Index the items by tile count (a small integer, 0..t_max); inside each tile class the
   items are sorted by tokens, so "the largest item of class c that still fits r tokens"
   is one binary search plus a skip over already-placed items (a union-find "previous free
   slot" array, so each placed item is skipped in amortised O(1)).
2. Fill one sequence at a time. At each step, among the largest fitting item of every tile
   class, take the one with the highest weighted dot product between its size and the
   sequence's remaining room: w_tok * (tok/l_max) * (room_tok/l_max) + w_til * (til/t_max) *
   (room_til/t_max). An empty sequence thus starts with the biggest items; as one budget
   fills up, items heavy in the other budget win, which pairs tile-heavy with token-heavy
   items. The weights are the remaining demand in each dimension (the scarcer budget
   matters more) and are refreshed at every new sequence. A sequence is closed when no
   remaining item fits.
Cost: O(n * (t_max + 1) * log n) in a compiled loop (numba); about 1M items/s here.
(A repair pass that dissolves the least-filled bins into other bins' room, and an
item-centric best-fit-decreasing variant, were measured and never used fewer bins on the
benchmark mixes, so they are not here.)

Where the simple bound cannot be met (coarse tile counts against a small t_max, e.g.
8192/24 with 13-tile images), the benchmark also prints the LP bound of the tile dimension
(Gilmore-Gomory patterns), which is what an optimal packing can reach.

`pack_2d_stream` packs an iterator in windows with bounded memory (see its docstring).
Everything is deterministic: same items and options, same bins.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
from numba import njit


def _as_arrays(items: Sequence[tuple[int, int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(items, dtype=np.int64)
    if arr.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"items must be (n_tokens, n_tiles) pairs, got an array of shape {arr.shape}")
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])


def check_items(tokens: np.ndarray, tiles: np.ndarray, max_tokens: int, max_tiles: int) -> None:
    """Raise ValueError naming the first item that no sequence can hold."""
    if max_tokens <= 0 or max_tiles < 0:
        raise ValueError(f"budgets must be positive, got max_tokens={max_tokens}, max_tiles={max_tiles}")
    bad = np.flatnonzero((tokens < 0) | (tiles < 0) | (tokens > max_tokens) | (tiles > max_tiles))
    if len(bad):
        i = int(bad[0])
        if tokens[i] < 0 or tiles[i] < 0:
            raise ValueError(f"item {i} has a negative size ({tokens[i]} tokens, {tiles[i]} tiles)")
        raise ValueError(f"item {i} ({tokens[i]} tokens, {tiles[i]} tiles) exceeds the budget "
                         f"({max_tokens} tokens, {max_tiles} tiles); split or truncate it first "
                         f"({len(bad)} such items)")


def lower_bound(items: Sequence[tuple[int, int]] | np.ndarray, max_tokens: int, max_tiles: int) -> int:
    """max(ceil(sum tokens / l_max), ceil(sum tiles / t_max)): no packing can use fewer bins."""
    tokens, tiles = _as_arrays(items)
    if len(tokens) == 0:
        return 0
    lb_tok = -(-int(tokens.sum()) // max_tokens)
    lb_til = -(-int(tiles.sum()) // max_tiles) if max_tiles > 0 else 0
    return max(lb_tok, lb_til, 1)


# ------------------------------------------------------------------ compiled core
@njit(cache=True)
def _find(parent: np.ndarray, i: int) -> int:
    """Largest free slot <= i (slot 0 is the sentinel 'none'), with path compression."""
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True)
def _fill_bins(tok_sorted, til_sorted, class_start, class_end, max_tokens, max_tiles):
    """Step 2. Slots 1..n hold the items sorted by (tiles, tokens); returns the bin of each slot."""
    n = len(tok_sorted) - 1
    parent = np.arange(n + 1)
    left = class_end - class_start  # items not yet placed, per tile class
    bin_of = np.full(n + 1, -1, np.int64)
    tile_budget = max(max_tiles, 1)
    rem_tok = 0.0
    rem_til = 0.0
    for s in range(1, n + 1):
        rem_tok += tok_sorted[s]
        rem_til += til_sorted[s]
    n_classes = len(class_start)
    placed = 0
    b = -1
    while placed < n:
        b += 1
        room_tok = max_tokens
        room_til = max_tiles
        demand = rem_tok / max_tokens + rem_til / tile_budget
        w_tok = (rem_tok / max_tokens) / demand if demand > 0 else 0.5
        w_til = 1.0 - w_tok
        while True:
            best = -1
            best_score = -1.0
            top = min(room_til, n_classes - 1)
            for c in range(top + 1):
                if left[c] == 0:
                    continue
                lo = class_start[c]
                hi = class_end[c]  # exclusive
                # last slot in [lo, hi) whose tokens <= room_tok
                a, z = lo, hi
                while a < z:
                    mid = (a + z) // 2
                    if tok_sorted[mid] <= room_tok:
                        a = mid + 1
                    else:
                        z = mid
                if a == lo:
                    continue
                slot = _find(parent, a - 1)
                if slot < lo:
                    continue
                score = (w_tok * (tok_sorted[slot] / max_tokens) * (room_tok / max_tokens)
                         + w_til * (c / tile_budget) * (room_til / tile_budget))
                # tie -> the larger item (more tokens), then the earlier class
                if score > best_score:
                    best_score = score
                    best = slot
            if best < 0:
                break
            parent[best] = best - 1
            c = til_sorted[best]
            left[c] -= 1
            bin_of[best] = b
            room_tok -= tok_sorted[best]
            room_til -= c
            rem_tok -= tok_sorted[best]
            rem_til -= c
            placed += 1
    return bin_of, b + 1


# ------------------------------------------------------------------ public API
def pack_2d(items: Sequence[tuple[int, int]] | np.ndarray, max_tokens: int, max_tiles: int,
            **options) -> list[list[int]]:
    """Pack (n_tokens, n_tiles) items into bins under both budgets.

    Returns bins of item indices (each bin sorted ascending, bins ordered by their smallest
    index); every index appears exactly once and every bin is within both budgets.
    An item larger than a budget raises ValueError naming it; unknown options raise TypeError.
    """
    if options:
        raise TypeError(f"unknown pack_2d options: {sorted(options)} (pack_2d takes none)")
    tokens, tiles = _as_arrays(items)
    check_items(tokens, tiles, max_tokens, max_tiles)
    n = len(tokens)
    if n == 0:
        return []
    order = np.lexsort((np.arange(n), tokens, tiles))  # by tiles, then tokens, then index
    n_classes = int(tiles.max()) + 1
    class_end = np.searchsorted(tiles[order], np.arange(n_classes), side="right") + 1
    class_start = np.concatenate(([1], class_end[:-1]))
    tok_sorted = np.concatenate(([0], tokens[order]))
    til_sorted = np.concatenate(([0], tiles[order]))
    slot_bin, n_bins = _fill_bins(tok_sorted, til_sorted, class_start.astype(np.int64),
                                  class_end.astype(np.int64), int(max_tokens), int(max_tiles))
    bin_of = np.empty(n, np.int64)
    bin_of[order] = slot_bin[1:]
    return _group(bin_of)


def _group(bin_of: np.ndarray) -> list[list[int]]:
    """Bins as sorted index lists, ordered by their first index (stable, deterministic)."""
    idx = np.argsort(bin_of, kind="stable")
    labels = bin_of[idx]
    cuts = np.flatnonzero(np.diff(labels)) + 1
    groups = np.split(idx, cuts)
    groups.sort(key=lambda g: int(g[0]))
    return [g.tolist() for g in groups]


def pack_2d_stream(items: Iterable[tuple[int, int]], max_tokens: int, max_tiles: int, *,
                   window: int = 50_000, carry_fill: float = 0.95,
                   ) -> Iterator[list[int]]:
    """Pack an iterator with bounded memory: at most `window` + carried items are held.

    Items are read in windows; each window (plus the items of the previous window's
    under-filled bins) is packed with `pack_2d`. Bins filled to at least `carry_fill` in one
    budget are emitted; the others go back into the next window, so only the very last
    window leaves partly filled bins. Yields bins of global item indices.
    """
    if not 0 < carry_fill <= 1:
        raise ValueError(f"carry_fill must be in (0, 1], got {carry_fill}")
    buf_idx: list[int] = []
    buf_items: list[tuple[int, int]] = []
    tile_budget = max(max_tiles, 1)
    it = iter(items)
    offset = 0
    exhausted = False
    while not exhausted or buf_idx:
        fresh = 0
        while fresh < window:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            tok, til = int(item[0]), int(item[1])
            if not (0 <= tok <= max_tokens and 0 <= til <= max_tiles):
                raise ValueError(f"item {offset} ({tok} tokens, {til} tiles) exceeds the budget "
                                 f"({max_tokens} tokens, {max_tiles} tiles) or is negative; "
                                 "split or truncate it first")
            buf_idx.append(offset)
            buf_items.append((tok, til))
            offset += 1
            fresh += 1
        if not buf_items:
            break
        bins = pack_2d(buf_items, max_tokens, max_tiles)
        carry_idx: list[int] = []
        carry_items: list[tuple[int, int]] = []
        for b in bins:
            tok = sum(buf_items[i][0] for i in b)
            til = sum(buf_items[i][1] for i in b)
            if exhausted or max(tok / max_tokens, til / tile_budget) >= carry_fill or fresh == 0:
                yield sorted(buf_idx[i] for i in b)
            else:
                carry_idx.extend(buf_idx[i] for i in b)
                carry_items.extend(buf_items[i] for i in b)
        if len(carry_items) > window:  # a pathological mix: emit rather than grow without bound
            for b in pack_2d(carry_items, max_tokens, max_tiles):
                yield sorted(carry_idx[i] for i in b)
            carry_idx, carry_items = [], []
        buf_idx, buf_items = carry_idx, carry_items
        if exhausted and not buf_items:
            break
