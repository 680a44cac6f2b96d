"""Packing benchmark: bins / lower bound and items/s for pack_2d against the baselines.

Workloads: synthetic mixes (tests.workloads) of 50k items at 16384/48 (InternVL 2.5) and
8192/24. For each: LB = max(ceil(sum tokens / l_max), ceil(sum tiles / t_max)); where the
tile budget binds and tile counts are coarse, LB is not reachable, so the table also gives
the LP bound of the tile dimension (Gilmore-Gomory patterns solved with scipy/HiGHS), a
bound an optimal packing cannot beat either. Baselines run in the same process:
InternVL's buffer packer (buffer 20) and plain first fit (both in input order).
"""

from __future__ import annotations

import collections
import time

import numpy as np

from packing.baselines import first_fit, internvl_buffer
from packing.pack2d import lower_bound, pack_2d, pack_2d_stream
from tests.workloads import MIXES, make_workload

N = 50_000


def tile_lp_bound(tiles: np.ndarray, capacity: int) -> float:
    """LP relaxation of 1D bin packing on tile counts, by column generation.

    Restricted master LP (scipy/HiGHS) over packing patterns; the pricing problem is a
    bounded knapsack on the duals solved by dynamic programming over the capacity.
    """
    from scipy.optimize import linprog

    counts = collections.Counter(int(t) for t in tiles if t > 0)
    sizes = sorted(counts)
    if not sizes:
        return 0.0
    demand = np.array([counts[s] for s in sizes], dtype=float)
    patterns = [[min(capacity // s, counts[s]) if j == i else 0 for j in range(len(sizes))]
                for i, s in enumerate(sizes)]
    for _ in range(500):
        a = np.array(patterns, dtype=float).T
        res = linprog(np.ones(a.shape[1]), A_ub=-a, b_ub=-demand, method="highs")
        duals = -res.ineqlin.marginals
        # bounded knapsack: best[c] = max dual value using capacity c; copies unrolled
        best = np.zeros(capacity + 1)
        take = [[0] * len(sizes) for _ in range(capacity + 1)]
        for j, s in enumerate(sizes):
            for _copy in range(min(capacity // s, counts[s])):
                for c in range(capacity, s - 1, -1):
                    if best[c - s] + duals[j] > best[c] + 1e-12:
                        best[c] = best[c - s] + duals[j]
                        take[c] = take[c - s].copy()
                        take[c][j] += 1
        c = int(np.argmax(best))
        if best[c] <= 1 + 1e-9:
            return float(res.fun)
        patterns.append(take[c])
    return float(res.fun)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    pack_2d([(1, 1)], 4, 4)  # compile once (numba caches to disk) before timing
    print(f"{'workload':<26} {'LB':>6} {'LPtile':>8} {'best':>6} | {'pack_2d':>16} | {'stream 5k':>16} | "
          f"{'InternVL buf20':>16} | {'first fit':>16}")
    print(f"{'':<26} {'':>6} {'':>8} {'/bound':>6} | {'bins/LB  items/s':>16} | {'bins/LB  items/s':>16} | "
          f"{'bins/LB  items/s':>16} | {'bins/LB  items/s':>16}")
    for max_tokens, max_tiles in ((16384, 48), (8192, 24)):
        for mix in MIXES:
            items = make_workload(mix, N, max_tokens, max_tiles, seed=1)
            lb = lower_bound(items, max_tokens, max_tiles)
            arr = np.asarray(items)
            lp = tile_lp_bound(arr[:, 1], max_tiles) if arr[:, 1].sum() else 0.0
            bound = max(lb, int(np.ceil(lp - 1e-6)))
            cells = []
            for fn, kw in ((pack_2d, {}), (lambda *a: list(pack_2d_stream(iter(items), *a[1:], window=5000)), {}),
                           (internvl_buffer, {}), (first_fit, {})):
                bins, sec = timed(fn, items, max_tokens, max_tiles, **kw)
                cells.append(f"{len(bins) / lb:7.4f} {N / sec:8.0f}")
            name = f"{mix} {max_tokens}/{max_tiles}"
            best = len(pack_2d(items, max_tokens, max_tiles)) / bound
            print(f"{name:<26} {lb:>6} {lp:>8.0f} {best:>6.4f} | " + " | ".join(cells), flush=True)
    print("bins/LB: 1.0000 is the lower bound; LPtile: tile-dimension LP bound (bins), a tighter "
          "floor than LB when larger; best/bound: pack_2d bins / max(LB, ceil(LPtile))")


if __name__ == "__main__":
    main()
