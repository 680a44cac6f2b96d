"""Filter throughput (texts/s on one core) on 2 KB answers, and detector quality vs a naive one.

Texts: ~2 KB chunks of pydoc topics, licence texts and stdlib code, a third of them with
injected repetition (tests/filters/test_repetition.py builds them). Everything runs in
this one process on one thread, so texts/s is per core.

Baseline, measured in the same run: a naive single-signal repetition check, Gopher's
"fraction of characters in duplicated word 5-grams" with its 0.15 threshold, in plain
Python. The table gives each filter's rate, the whole filter set's rate (heuristic rules
+ repetition + fastText language id, through FilterStage.filter_row as the stage runs it),
and precision/recall of both detectors on the labelled set.

Then the batch paths, each next to the per-text or per-row path in the same run:
repetition_signals_batch (batches of 256 texts) against repetition_signals on the 2 KB set
and on the load test's ~1.2 KB answers (tests/bench/bench_load._texts), and the whole
FilterStage on load-test rows: FilterStage.process_rows on batches of 256 rows (one batch
call for the repetition signals, fastText over the batch in a row) against filter_row row
by row (the per-text path), rows/s on one core.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")


def naive_dup_ngram_fraction(text: str, n: int = 5) -> float:
    """Gopher-style: share of word characters inside word n-grams that occur more than once."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered) if c) / max(1, total)


def naive_is_repetitive(text: str) -> bool:
    return naive_dup_ngram_fraction(text) > 0.15


def rate(fn, items, min_seconds: float = 1.0) -> float:
    """Items per second of fn over items, repeated until min_seconds have passed."""
    done, start = 0, time.perf_counter()
    while True:
        for x in items:
            fn(x)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def batch_rate(fn, items, size: int = 256, min_seconds: float = 1.0) -> float:
    """Items per second of fn over batches of `size` items."""
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    return rate(fn, batches, min_seconds) * len(items) / len(batches)


def stage_rate(run, rows, min_seconds: float = 2.0) -> float:
    """Rows per second of run(rows) on fresh copies of the rows (the stage writes into them);
    copying is not timed."""
    done, elapsed = 0, 0.0
    while elapsed < min_seconds:
        fresh = [dict(r) for r in rows]
        start = time.perf_counter()
        run(fresh)
        elapsed += time.perf_counter() - start
        done += len(rows)
    return done / elapsed


def quality(pred, data) -> tuple[float, float]:
    tp = sum(pred(t) and label for _, t, label in data)
    fp = sum(pred(t) and not label for _, t, label in data)
    fn = sum((not pred(t)) and label for _, t, label in data)
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def main() -> None:
    import tempfile

    from curate.recipe import FilterConfig, SourceConfig
    from curate.stages.base import RunContext
    from curate.stages.filter import FilterStage
    from filters import heuristics
    from filters.repetition import is_repetitive, repetition_score
    from tests.filters.test_repetition import labelled_set

    data = labelled_set()
    pool = [t for _, t, _ in data]
    texts = [(a + "\n\n" + b)[:2048] for a, b in zip(pool, pool[1:] + pool[:1])]  # exactly 2 KB each
    mean_kb = sum(len(t.encode()) for t in texts) / len(texts) / 1024
    ctx = RunContext(out_dir=tempfile.mkdtemp(), sources={"s": SourceConfig(name="s", manifests=["m"])})
    stage = FilterStage(FilterConfig(language=True, write_review=False), ctx)
    stage.setup()
    rows = [{"id": str(i), "source": "s", "media": [], "reject_reason": None,
             "conversations": [{"from": "human", "value": "Explain the topic."}, {"from": "gpt", "value": t}]}
            for i, t in enumerate(texts)]

    def whole_set(r):
        stage.filter_row(dict(r, reject_reason=None))

    results = [
        ("baseline: naive dup 5-gram fraction", rate(naive_dup_ngram_fraction, texts)),
        ("repetition_score (9 signals)", rate(repetition_score, texts)),
        ("heuristic rules (8 rules)", rate(lambda r: heuristics.check(r["conversations"], []), rows)),
        ("fastText language id", rate(lambda t: stage.lid.predict(t), texts)),
        ("whole filter set (FilterStage row)", rate(whole_set, rows)),
    ]
    base = results[0][1]
    print(f"{len(texts)} texts, mean {mean_kb:.2f} KB, one process, one thread (texts/s = per core)")
    print(f"{'filter':40s} {'texts/s':>10s} {'x baseline':>11s}")
    for name, r in results:
        print(f"{name:40s} {r:10.0f} {r / base:11.2f}")
    p0, r0 = quality(naive_is_repetitive, data)
    p1, r1 = quality(is_repetitive, data)
    n_pos = sum(label for *_, label in data)
    print(f"\nlabelled set: {len(data)} texts, {n_pos} repetitive")
    print(f"{'detector':40s} {'precision':>10s} {'recall':>8s}")
    print(f"{'baseline: naive dup 5-gram > 0.15':40s} {p0:10.3f} {r0:8.3f}")
    print(f"{'is_repetitive':40s} {p1:10.3f} {r1:8.3f}")
    batch_paths(stage, texts)


def batch_paths(stage, texts: list[str]) -> None:
    import numpy as np

    from filters.repetition import repetition_signals, repetition_signals_batch
    from tests.bench.bench_load import _texts, vocabulary

    answers = _texts(np.random.default_rng(0), vocabulary(0), 2048)  # as the load test generates them
    kb = sum(len(a.encode()) for a in answers) / len(answers) / 1024
    print(f"\nbatch paths: batches of 256; load-test answers: {len(answers)}, mean {kb:.2f} KB")
    print(f"{'repetition signals':40s} {'per text/s':>10s} {'batch/s':>10s} {'x':>6s}")
    for name, items in (("2 KB set", texts), (f"load-test answers ({kb:.1f} KB)", answers)):
        one = rate(repetition_signals, items)
        many = batch_rate(repetition_signals_batch, items)
        print(f"{name:40s} {one:10.0f} {many:10.0f} {many / one:6.2f}")
    rows = [{"id": str(i), "source": "s", "modality": "text", "media": [], "reject_reason": None,
             "conversations": [{"from": "human", "value": "Explain the topic."}, {"from": "gpt", "value": a}]}
            for i, a in enumerate(answers)]

    def row_by_row(fresh):
        for r in fresh:
            stage.filter_row(r)

    def batches(fresh):
        for i in range(0, len(fresh), 256):
            stage.process_rows(fresh[i:i + 256])

    one, many = stage_rate(row_by_row, rows), stage_rate(batches, rows)
    print(f"{'whole FilterStage (rows/s, one core)':40s} {'per row':>10s} {'batch':>10s} {'x':>6s}")
    print(f"{'heuristics + repetition + fastText':40s} {one:10.0f} {many:10.0f} {many / one:6.2f}")


if __name__ == "__main__":
    main()
