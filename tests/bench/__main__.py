"""`make bench`: run every tests/bench/bench_*.py main() and print their tables.

Each benchmark measures its own baseline in the same run and prints ratios against it,
so numbers from different machines stay comparable. `python -m tests.bench NAME` runs one.
The whole-pipeline load test (bench_load, minutes to an hour) and the 1 GB JSON array manifest
(bench_manifest) run only when named:
`python -m tests.bench bench_load` (`make bench-load ROWS=1000000`).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

ON_DEMAND = {"bench_load", "bench_manifest"}  # too long for `make bench`: run by name


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)
                 and (n not in ON_DEMAND or any(a in (n, n.removeprefix("bench_")) for a in argv))]
    else:
        names = [n for n in names if n not in ON_DEMAND]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"tests.bench.{name}").main()
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"--- {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
