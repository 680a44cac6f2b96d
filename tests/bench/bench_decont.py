"""Decontamination cost: the stage's rows/s per core on bench_load's text rows against a
generated benchmark set, and what it would add to `make bench-load ROWS=1000000`.

Corpus: DECONT_BENCH_ROWS (default 100,000) text QA rows of about 1.2 KB, as bench_load writes
them (Zipf-Mandelbrot words of the Python documentation); 1% of them get a benchmark item
pasted into the question. Benchmark: DECONT_BENCH_ITEMS (default 100,000) MMLU-like items (a
25-word question and four 3-word choices) from the same vocabulary, so common phrases are
shared as much as they can be. The index is built once (timed apart), then `check_block` runs
over blocks of 1,024 rows in this process (one core), as a task of the stage does.

The machine is shared, so the filter stage (heuristics and repetition, as bench_load runs it)
is timed on the same rows in the same run: the projection scales the decontamination rate by
the filter's rate in bench_load's own measurement (6,164 rows/s/core) over its rate here.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

N_ROWS = int(os.environ.get("DECONT_BENCH_ROWS", "100000"))
N_ITEMS = int(os.environ.get("DECONT_BENCH_ITEMS", "100000"))
BLOCK = 1024
#: make bench-load ROWS=1000000, low overlap, 2026-12-05 (docs/benchmarks.md): 1.05M rows, 457 s on 2 cores
LOAD_ROWS, LOAD_WALL, LOAD_CORES = 1_050_000, 457.0, 2
LOAD_FILTER_RATE = 6164  # the filter's rows/s/core in that run


class _Shared:
    def __init__(self, value: object) -> None:
        self._v = value

    def value(self) -> object:
        return self._v


def benchmark_items(rng: np.random.Generator, vocab: list[str], n: int) -> list[tuple[str, str]]:
    from tests.bench.bench_load import _texts

    questions = _texts(rng, vocab, n, words=25)
    choices = _texts(rng, vocab, 4 * n, words=3)
    return [(f"q{i}", q + "\n" + "\n".join(f"{'ABCD'[k]}. {choices[4 * i + k]}" for k in range(4)))
            for i, q in enumerate(questions)]


def corpus(rng: np.random.Generator, vocab: list[str], items: list[tuple[str, str]]) -> tuple[pa.Table, int]:
    from tests.bench.bench_load import _texts

    answers = _texts(rng, vocab, N_ROWS)
    planted = 0
    convs = []
    for j, a in enumerate(answers):
        q = f"Question {j}: what does the following passage say about {vocab[j % len(vocab)]}?"
        if j % 100 == 0:
            q = "Please answer: " + items[int(rng.integers(len(items)))][1].lower()
            planted += 1
        convs.append([{"from": "human", "value": q}, {"from": "gpt", "value": a}])
    none = pa.nulls(N_ROWS, pa.string())
    table = pa.table({"id": [f"t{j}" for j in range(N_ROWS)], "source": ["bench"] * N_ROWS,
                      "conversations": convs, "reject_stage": none, "reject_reason": none,
                      "reject_detail": none})
    return table, planted


def filter_rows_per_s(table: pa.Table) -> float:
    """The filter stage's rows/s on (a prefix of) the same rows, in this process."""
    import tempfile

    from curate.recipe import FilterConfig
    from curate.stages.base import RunContext
    from curate.stages.filter import FilterStage

    n = min(len(table), 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        stage = FilterStage(FilterConfig(write_review=False), RunContext(out_dir=tmp))
        stage.ensure_setup()
        t0 = time.perf_counter()
        for start in range(0, n, 256):
            stage.process_batch(table.slice(start, 256))
        return n / (time.perf_counter() - t0)


def parquet_rows_per_s(table: pa.Table) -> float:
    """One Parquet write and read of the rows (what the runner does around a stage), rows/s."""
    import tempfile

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pq.write_table(table, f"{tmp}/x.parquet")
        pq.read_table(f"{tmp}/x.parquet")
        return len(table) / (time.perf_counter() - t0)


def main() -> None:
    from curate.decont import build_index
    from curate.stages.decontaminate import check_block
    from tests.bench.bench_load import vocabulary

    rng = np.random.default_rng(0)
    vocab = vocabulary(0)
    items = benchmark_items(rng, vocab, N_ITEMS)
    table, planted = corpus(rng, vocab, items)
    mb = sum(len(t["value"]) for c in table.column("conversations").to_pylist() for t in c) / 1e6
    t0 = time.perf_counter()
    index, stats = build_index([("gen", items)])
    t_build = time.perf_counter() - t0
    shared = _Shared(index)
    t0 = time.perf_counter()
    rejected = 0
    for start in range(0, N_ROWS, BLOCK):
        out = check_block(table.slice(start, BLOCK), shared)
        rejected += len(out) - out.column("reject_reason").null_count
    t_check = time.perf_counter() - t0
    rate = N_ROWS / t_check
    filter_rate = filter_rows_per_s(table)
    io_rate = parquet_rows_per_s(table)
    scale = LOAD_FILTER_RATE / filter_rate  # this machine now against bench_load's run
    # the stage's work plus the Parquet read and write of its rows that every stage that runs pays
    extra = LOAD_ROWS * (1 / rate + 1 / io_rate) / (scale * LOAD_CORES)
    size_mb = (index.hashes.nbytes + index.item_of.nbytes + index.bitmap.nbytes + index.items.nbytes) / 2**20
    print(f"index: {N_ITEMS:,} items -> {len(index):,} 13-grams in {t_build:.1f}s "
          f"({size_mb:.0f} MB)")
    print(f"lookup: {N_ROWS:,} rows ({mb:.0f} MB of turns) in {t_check:.1f}s: {rate:,.0f} rows/s/core, "
          f"{mb / t_check:.1f} MB/s/core; rejected {rejected} of {planted} planted")
    print(f"filter stage on the same rows: {filter_rate:,.0f} rows/s/core "
          f"(bench_load: {LOAD_FILTER_RATE:,}); "
          f"decontamination / filter = {rate / filter_rate:.2f}")
    print(f"Parquet write + read of the same rows: {io_rate:,.0f} rows/s/core")
    print(f"projected at bench-load ROWS=1000000 ({LOAD_ROWS:,} rows, {LOAD_CORES} cores, "
          f"{LOAD_WALL:.0f} s): "
          f"+{extra:.0f} s = +{100 * extra / LOAD_WALL:.1f}% (+{t_build:.0f} s index build on the driver)")


if __name__ == "__main__":
    main()
