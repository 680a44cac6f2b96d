"""Reference packers measured against `pack_2d` by `make bench` and the tests.

- `first_fit`: plain first fit in input order (both budgets), the textbook baseline.
- `internvl_buffer`: a re-implementation of the greedy buffer packer InternVL 2.5 trains with
  (internvl_chat/internvl/train/dataset_packed.py, max_buffer_size 20), reduced to sizes:
  each incoming sample joins the first buffer (buffers kept sorted by tile count, most
  first) that can take it under both budgets, else starts a new buffer; a buffer leaves
  when it is exactly full in tokens or tiles, and when more than `buffer_size` buffers are
  open the one with the most tiles leaves. Written from the description of its behaviour.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def first_fit(items: Sequence[tuple[int, int]], max_tokens: int, max_tiles: int) -> list[list[int]]:
    """Each item, in input order, goes to the first open bin with room in both budgets."""
    n = len(items)
    used_tok = np.zeros(max(n, 1), np.int64)
    used_til = np.zeros(max(n, 1), np.int64)
    bins: list[list[int]] = []
    for i, (tok, til) in enumerate(items):
        k = len(bins)
        fits = np.flatnonzero((used_tok[:k] + tok <= max_tokens) & (used_til[:k] + til <= max_tiles))
        b = int(fits[0]) if len(fits) else k
        if b == k:
            bins.append([])
        bins[b].append(i)
        used_tok[b] += tok
        used_til[b] += til
    return bins


def internvl_buffer(items: Sequence[tuple[int, int]], max_tokens: int, max_tiles: int,
                    buffer_size: int = 20) -> list[list[int]]:
    out: list[list[int]] = []
    buffers: list[tuple[int, int, list[int]]] = []  # (tokens, tiles, members), most tiles first
    for i, (tok, til) in enumerate(items):
        found = None
        for b, (bt, bg, _) in enumerate(buffers):
            if bg + til <= max_tiles and bt + tok <= max_tokens:
                found = b
                break
        if found is None:
            bt, bg, members = 0, 0, []
        else:
            bt, bg, members = buffers.pop(found)
        buf = (bt + tok, bg + til, members + [i])
        if buf[0] >= max_tokens:
            out.append(buf[2])
        else:
            at = len(buffers)
            for b, (_, g, _) in enumerate(buffers):
                if g < buf[1]:
                    at = b
                    break
            buffers.insert(at, buf)
        while buffers and buffers[0][1] >= max_tiles:
            out.append(buffers.pop(0)[2])
        while len(buffers) > buffer_size:
            out.append(buffers.pop(0)[2])
    out.extend(b[2] for b in buffers)
    return out
