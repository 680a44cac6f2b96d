"""Decontaminate: reject samples that contain a benchmark item (curate.decont).

A sample leaves as `benchmark_overlap` when a normalised n-gram of any of its turns (13 words,
or 30 characters for a mostly Chinese/Japanese item) occurs in an item of a benchmark listed
in `stages.decontaminate.benchmarks`; the detail names the benchmark, the item and the shared
text. It runs after dedupe, so no time goes to duplicates, and before scoring.

The index is built once, on the driver, from the benchmark files (JSONL, JSON arrays or
Parquet), and shared with every task through the executor (`share`: one copy in the object
store, its arrays read without a copy); each task looks up its whole block at once. Without
benchmarks the stage is skipped and its rows pass through untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.stages.base import GlobalStage, Job, Resources

REASON = "benchmark_overlap"


class DecontaminateStage(GlobalStage):
    name: ClassVar[str] = "decontaminate"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=1024)

    def inputs(self) -> list[str]:
        return ["conversations"]

    def skip_reason(self) -> str | None:
        return None if self.config.benchmarks else "no benchmarks (stages.decontaminate.benchmarks is empty)"

    def validate(self) -> None:
        from curate.errors import UserError
        from curate.manifest import manifest_format

        names = [b.name for b in self.config.benchmarks]
        if len(set(names)) != len(names):
            raise UserError(f"stages.decontaminate.benchmarks: names must differ, got {names}")
        for b in self.config.benchmarks:
            if not Path(b.path).is_file():
                raise UserError(f"stages.decontaminate.benchmarks[{b.name}].path: no file {b.path} "
                                f"(relative paths resolve against the working directory)")
            try:
                manifest_format(b.path)
            except UserError as e:
                raise UserError(f"stages.decontaminate.benchmarks[{b.name}]: {e}") from None

    def build(self) -> tuple[Any, dict[str, Any]]:
        """The shared index and what it holds per benchmark (the marker's facts)."""
        from curate.decont import build_index, read_benchmark
        from curate.errors import UserError

        c = self.config
        items = [(b.name, read_benchmark(b.name, b.path, b.fields.model_dump())) for b in c.benchmarks]
        index, per_benchmark = build_index(items, c.ngram, c.ngram_cjk)
        indexed = sum(v["items"] - v["short"] for v in per_benchmark.values())
        if not indexed:
            raise UserError(f"stages.decontaminate: no benchmark item has {c.ngram} units or more "
                             f"(check `fields`: {[b.fields.model_dump() for b in c.benchmarks]})")
        return index, {"benchmarks": per_benchmark, "ngrams": len(index),
                       "index_mb": round((index.hashes.nbytes + index.item_of.nbytes + index.bitmap.nbytes
                                          + index.items.nbytes) / 2**20, 1)}

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        index, info = self.build()
        shared = job.executor.share(index)
        return job.executor.map(ds, check_block, job.resources, index=shared, stage=self.name), info


def check_block(batch: pa.Table, index: Any, stage: str = "decontaminate") -> pa.Table:
    """Reject the alive rows of a block that share an n-gram with a benchmark item."""
    import pyarrow.compute as pc

    from curate.decont import find_overlaps
    from curate.records import reject_where

    if not len(batch):
        return batch
    alive = pc.is_null(batch.column("reject_reason")).to_numpy(zero_copy_only=False)
    convs = batch.column("conversations")
    if isinstance(convs, pa.ChunkedArray):
        convs = convs.combine_chunks()
    offsets = convs.offsets.to_numpy() - convs.offsets[0].as_py()
    counts = np.diff(offsets)
    values = pc.list_flatten(convs).field("value").fill_null("").to_pylist()
    row_of = np.repeat(np.arange(len(batch)), counts)
    keep = alive[row_of]
    turns = np.flatnonzero(keep)
    found = find_overlaps([values[t] for t in turns], index.value())
    if not found:
        return batch
    details = [""] * len(batch)
    mask = np.zeros(len(batch), bool)
    for pos in sorted(found):  # a row's first turn with an overlap names it
        row = int(row_of[turns[pos]])
        if mask[row]:
            continue
        o = found[pos]
        turn = int(turns[pos] - offsets[row]) + 1
        mask[row] = True
        details[row] = f"benchmark={o.benchmark} item={o.key} turn={turn} shared=\"{o.shared}\""
    return reject_where(batch, mask, stage, REASON, pa.array(details, pa.string()))
