"""Pack, step 3 (shards): write the planned sequences as WebDataset tar shards, plus their index.

Rows arrive one per copy with their `sequence` and `position` (curate.stages.pack_plan).
Sequence k goes to shard k // max_sequences; Ray's groupby brings each shard's rows together
and one task writes each shard (packing.shards: sorted members, fixed mtime, no pickle).
The shards are built in `shards.tmp/` and renamed into place with their index.json,
contents.parquet (each distinct sample and its copy count) and sequences.parquet once all
are written, so `shards/` never holds half a run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from curate.layout import read_marker, write_parquet_atomic
from curate.stages.base import GlobalStage, Job, Resources, map_options
from packing.energon_meta import write_energon_meta
from packing.shards import SHARD_PATTERN, pack_sequence, write_index, write_shard

CONTENTS_COLUMNS = ["id", "orig_id", "source", "origin", "modality", "n_tokens", "n_tiles"]


class ShardStage(GlobalStage):
    name: ClassVar[str] = "shard"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256)
    source_keys: ClassVar[tuple[str, ...]] = ("augment",)

    def inputs(self) -> list[str]:
        return ["sequence", "position", "input_ids", "labels", "media"]

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return pa.schema([("entry", pa.string()), ("reject_reason", pa.string())])

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        import ray

        tmp = self.ctx.layout.tmp(self.ctx.layout.shards)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        n_sequences = int((read_marker(job.input_dir) or {}).get("sequences", 0))
        if not n_sequences:
            return ray.data.from_arrow(pa.table({"entry": pa.array([], pa.string())})), {}
        per_shard = self.config.max_sequences
        n_shards = (n_sequences - 1) // per_shard + 1
        augment = [name for name, s in self.ctx.sources.items() if s.augment]
        written = ds.map_batches(_with_shard, **map_options(job.resources, actor=False, whole_blocks=True),
                                 fn_kwargs={"per_shard": per_shard}).groupby(
            "shard", num_partitions=max(1, min(n_shards, 64))).map_groups(
            _write_group, batch_format="pyarrow", fn_kwargs={"shard_dir": str(tmp), "augment_sources": augment})
        return written, {}

    def finish(self, job: Job) -> dict[str, Any]:
        """Index, contents and sequences tables beside the shards, then the shards go into place."""
        layout = self.ctx.layout
        tmp = layout.tmp(layout.shards)
        entries = [json.loads(e) for e in pads.dataset(str(job.output_dir), format="parquet")
                   .to_table(columns=["entry"]).column("entry").to_pylist()]
        budgets = (read_marker(job.input_dir) or {}).get("budgets", {})
        write_index(tmp, entries, budgets)
        if entries:  # Energon's .nv-meta/ (index, train/val split, sample type) beside the shards
            write_energon_meta(tmp, self.config.val_shards)
        placed = pads.dataset(str(job.input_dir), format="parquet").to_table(
            columns=CONTENTS_COLUMNS + ["sequence"], filter=pc.field("reject_reason").is_null())
        write_parquet_atomic(tmp / layout.contents.name, contents_table(placed))
        write_parquet_atomic(tmp / layout.sequences.name, sequences_table(placed, self.config.max_sequences))
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


def _with_shard(batch: pa.Table, per_shard: int) -> pa.Table:
    shard = pc.divide(batch.column("sequence"), per_shard)  # integer division on int64
    return batch.append_column("shard", shard)


def _write_group(group: pa.Table, shard_dir: str, augment_sources: list[str]) -> pa.Table:
    group = group.sort_by([("sequence", "ascending"), ("position", "ascending")])
    shard = group.column("shard")[0].as_py()
    rows = group.to_pylist()
    sequences = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end]["sequence"] == rows[start]["sequence"]:
            end += 1
        seq = rows[start]["sequence"]
        sequences.append(pack_sequence(f"{shard:06d}-{seq:08d}", seq, rows[start:end], frozenset(augment_sources)))
        start = end
    entry = write_shard(Path(shard_dir) / SHARD_PATTERN.format(shard), sequences)
    return pa.table({"entry": [json.dumps(entry)]})
