"""Pack, step 3 (shards): write the planned sequences as WebDataset tar shards, plus their index.

Rows arrive one per copy with their `sequence` and `position` (curate.stages.pack_plan).
Sequence k goes to shard k // max_sequences. Consecutive shards form groups of about
GROUP_BYTES of rows, and at least one group per CPU, so that every core writes. A shuffle
through files, not the object store, brings each group's rows together: one task per input
file writes the columns the shards need into one scratch Parquet file, a row group per
group; then one task per group reads its row groups, sorts them and writes its shards one
after the other (packing.shards: sorted members, fixed mtime, no pickle). So a writer holds
one group, never the run, and at 1M rows the stage no longer spills a sort-based groupby of
every row through the object store.
The shards are built in `shards.tmp/` and renamed into place with their index.json,
contents.parquet (each distinct sample and its copy count) and sequences.parquet once all
are written, so `shards/` never holds half a run. The index records the packing budgets,
which the runner hands every stage in RunContext.budgets (stages.pack.max_tokens / max_tiles).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate.layout import write_parquet_atomic
from curate.stages.base import GlobalStage, Job, Resources
from packing.energon_meta import write_energon_meta
from packing.shards import SHARD_PATTERN, pack_sequence, write_index, write_shard

CONTENTS_COLUMNS = ["id", "orig_id", "source", "origin", "modality", "n_tokens", "n_tiles"]
#: what packing.shards.pack_sequence reads of a row, and where it goes
SHARD_COLUMNS = ["id", "orig_id", "source", "modality", "n_tiles", "n_response_tokens", "media", "input_ids",
                 "labels", "sequence", "position"]
#: Arrow bytes of a writer task's group of consecutive shards; it peaks at ~3x (docs/benchmarks.md)
GROUP_BYTES = 128 * 1024**2
ROW_BYTES = 512  # a row's columns besides its tokens (ids, media, sequence), about
PIECES = pa.schema([("group", pa.int64()), ("path", pa.string()), ("row_group", pa.int32())])


class ShardStage(GlobalStage):
    name: ClassVar[str] = "shard"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256)
    source_keys: ClassVar[tuple[str, ...]] = ("augment",)
    ctx_keys: ClassVar[tuple[str, ...]] = ("budgets",)

    def inputs(self) -> list[str]:
        return ["sequence", "position", "input_ids", "labels", "media"]

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return pa.schema([("entry", pa.string()), ("reject_reason", pa.string())])

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        ex = job.executor
        tmp = self.ctx.layout.tmp(self.ctx.layout.shards)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = sorted(job.input_dir.glob("*.parquet"))
        n_sequences, arrow_bytes = _measure(files)
        if not n_sequences:
            return ex.dataset([pa.table({"entry": pa.array([], pa.string())})]), {}
        per_shard = self.config.max_sequences
        n_shards = (n_sequences - 1) // per_shard + 1
        augment = [name for name, s in self.ctx.sources.items() if s.augment]
        # groups of about GROUP_BYTES, and at least one per CPU while there are shards to share
        by_bytes = int(GROUP_BYTES * n_shards // max(1, arrow_bytes))
        by_cpus = -(-n_shards // ex.cpus())
        shards_per_group = max(1, min(by_bytes, by_cpus))
        parts = scratch_dir(job)
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
        split = ex.map(ds, _split_by_group, job.resources, per_group=per_shard * shards_per_group,
                       parts_dir=str(parts))
        tables = [t for t in ex.get(ex.blocks(split)) if len(t)]
        pieces = pa.concat_tables(tables).sort_by("group") if tables else PIECES.empty_table()
        paths, row_groups = pieces.column("path").to_pylist(), pieces.column("row_group").to_pylist()
        starts, ends = _runs(pieces.column("group").to_numpy())
        write = ex.remote(_write_group, cpus=job.resources.cpus)
        entries = [write(paths[a:b], row_groups[a:b], per_shard, str(tmp), augment)
                   for a, b in zip(starts.tolist(), ends.tolist())]
        if not entries:
            return ex.dataset([pa.table({"entry": pa.array([], pa.string())})]), {"shard_groups": 0}
        return ex.dataset(entries), {"shard_groups": len(entries)}

    def finish(self, job: Job) -> dict[str, Any]:
        """Index, contents and sequences tables beside the shards, then the shards go into place."""
        layout = self.ctx.layout
        tmp = layout.tmp(layout.shards)
        entries = [json.loads(e) for e in pads.dataset(str(job.output_dir), format="parquet")
                   .to_table(columns=["entry"]).column("entry").to_pylist()]
        write_index(tmp, entries, dict(self.ctx.budgets))
        if entries:  # Energon's .nv-meta/ (index, train/val split, sample type) beside the shards
            write_energon_meta(tmp, self.config.val_shards)
        placed = pads.dataset(str(job.input_dir), format="parquet").to_table(
            columns=CONTENTS_COLUMNS + ["sequence"], filter=pc.field("reject_reason").is_null())
        write_parquet_atomic(tmp / layout.contents.name, contents_table(placed))
        write_parquet_atomic(tmp / layout.sequences.name, sequences_table(placed, self.config.max_sequences))
        shutil.rmtree(scratch_dir(job), ignore_errors=True)
        shutil.rmtree(layout.shards, ignore_errors=True)
        tmp.rename(layout.shards)
        return {"shards": len(entries), "sequences": sum(e["sequences"] for e in entries)}


def contents_table(placed: pa.Table) -> pa.Table:
    """Each distinct sample in the shards once, sorted by (source, id), with its copy count."""
    placed = placed.sort_by([("source", "ascending"), ("id", "ascending")])
    ids = placed.column("id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    starts = np.flatnonzero(first)
    copies = np.diff(np.append(starts, len(ids)))
    kept = placed.take(pa.array(starts, pa.int64())).select(CONTENTS_COLUMNS)
    return kept.append_column("copies", pa.array(copies, pa.int64()))


def sequences_table(placed: pa.Table, per_shard: int) -> pa.Table:
    """Per packed sequence: its shard, sample count, tokens and tiles."""
    seq = placed.column("sequence").to_numpy()
    n = int(seq.max()) + 1 if len(seq) else 0
    tokens = np.bincount(seq, weights=placed.column("n_tokens").to_numpy(), minlength=n)
    tiles = np.bincount(seq, weights=placed.column("n_tiles").to_numpy(), minlength=n)
    return pa.table({
        "sequence": np.arange(n, dtype=np.int64),
        "shard": np.arange(n, dtype=np.int64) // per_shard,
        "n_samples": [int(c) for c in np.bincount(seq, minlength=n)],
        "n_tokens": [int(t) for t in tokens],
        "n_tiles": [int(t) for t in tiles],
    })


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of each run of equal values in a sorted array."""
    if not len(values):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    return starts, np.append(starts[1:], len(values))


def scratch_dir(job: Job) -> Path:
    """The shuffle's scratch files, beside the stage's output (a re-run clears it with it)."""
    return job.output_dir.with_name(job.output_dir.name + ".parts")


def _measure(files: list[Path]) -> tuple[int, int]:
    """(sequences, about the Arrow bytes of the rows the shards need) of the planned rows:
    the sequences are numbered from 0 (pack_plan); the bytes are 8 per token (input_ids and
    labels as int32) and ROW_BYTES per row for the rest. (Parquet's own sizes say little here:
    labels are mostly -100 and compress to nearly nothing on disk, not in memory.)"""
    if not files:
        return 0, 0
    placed = pads.dataset([str(f) for f in files], format="parquet").to_table(
        columns=["n_tokens", "sequence"], filter=pc.field("reject_reason").is_null())
    last = pc.max(placed.column("sequence")).as_py()
    n_sequences = 0 if last is None else int(last) + 1
    return n_sequences, 8 * int(pc.sum(placed.column("n_tokens")).as_py() or 0) + ROW_BYTES * len(placed)


def _split_by_group(block: pa.Table, per_group: int, parts_dir: str) -> pa.Table:
    """Write the block's rows (the columns shards need) to one scratch Parquet file, one row
    group per shard group, in group order; returns where each group's rows are."""
    block = block.select(SHARD_COLUMNS)
    if not len(block):
        return PIECES.empty_table()
    group = pc.divide(block.column("sequence"), per_group).to_numpy()  # integer division on int64
    order = np.argsort(group, kind="stable")
    block, group = block.take(pa.array(order)), group[order]
    starts, ends = _runs(group)
    path = str(Path(parts_dir) / f"{uuid.uuid4().hex}.parquet")
    with pq.ParquetWriter(path, block.schema) as writer:
        for a, b in zip(starts.tolist(), ends.tolist()):
            writer.write_table(block.slice(a, b - a), row_group_size=b - a)
    return pa.table({"group": group[starts], "path": [path] * len(starts),
                     "row_group": np.arange(len(starts), dtype=np.int32)}, schema=PIECES)


def _write_group(paths: list[str], row_groups: list[int], per_shard: int, shard_dir: str,
                 augment_sources: list[str]) -> pa.Table:
    """Read one group's rows, then write each of its shards in turn; one index entry per shard."""
    group = pa.concat_tables([pq.ParquetFile(p).read_row_group(r) for p, r in zip(paths, row_groups)])
    group = group.sort_by([("sequence", "ascending"), ("position", "ascending")])
    seq = group.column("sequence").to_numpy()
    starts, ends = _runs(seq)
    shard_of = seq[starts] // per_shard
    augment = frozenset(augment_sources)
    entries = []
    for shard in np.unique(shard_of).tolist():
        mine = np.flatnonzero(shard_of == shard)
        lo, hi = int(starts[mine[0]]), int(ends[mine[-1]])
        rows = sample_dicts(group.slice(lo, hi - lo))
        sequences = [pack_sequence(f"{shard:06d}-{int(seq[a]):08d}", int(seq[a]), rows[a - lo:b - lo],
                                   augment) for a, b in zip(starts[mine].tolist(), ends[mine].tolist())]
        entries.append(json.dumps(write_shard(Path(shard_dir) / SHARD_PATTERN.format(shard), sequences)))
    return pa.table({"entry": entries})


def sample_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts for pack_sequence, their token lists as int32 array views (no Python ints)."""
    rows = table.drop_columns(["input_ids", "labels"]).to_pylist()
    for name in ("input_ids", "labels"):
        column = table.column(name).combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        for i, row in enumerate(rows):
            row[name] = values[offsets[i]:offsets[i + 1]]
    return rows
