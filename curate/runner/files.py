"""The runner's files: how a stage's input is read and which files it may hard-link.

Every stage writes Parquet files of at most ROWS_PER_FILE rows (one task each for the next
stage); a file whose rows would come out unchanged is hard-linked instead of rewritten
(`unchanged_files`, `written_schemas`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.manifest import RAW_SCHEMA, read_lines
from curate.stages.base import Stage, footer_stats

#: rows per Parquet file a stage writes at most: each file is one task of the next stage, so
#: the work spreads over the cores (and a cluster) whatever the stage before did to its blocks
ROWS_PER_FILE = 8192
#: media bytes (Parquet manifests) one block of raw manifest rows carries at most
BLOB_BYTES = 64 << 20


def written_schemas(stages: list[Stage], skips: list[str | None]) -> list[pa.Schema]:
    """The schema of the files each stage writes: its output schema, with the (null) columns
    of the skipped stages right after it. A skipped stage passes rows through, so it then
    finds its own output schema in its input files and hard-links them instead of writing
    every row again with a column of nulls (the CLIP stage without a model: its clip_score)."""
    out: list[pa.Schema] = []
    schema = RAW_SCHEMA
    for stage in stages:
        schema = stage.output_schema(schema)
        out.append(schema)
    for i in range(len(stages)):
        j = i
        while j + 1 < len(stages) and skips[j + 1] and out[j + 1].names[:len(out[i])] == out[i].names:
            j += 1
        out[i] = out[j] if j > i else out[i]
    return out


def input_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def unchanged_files(folder: Path, schema: pa.Schema,
                    keeps: Callable[[Any], bool] | None = None) -> tuple[list[Path], list[Path]]:
    """(files the stage would write again row for row, the other files with rows): a file is
    unchanged when it has rows, `schema`, a footer whose statistics count no rejected row
    (every reject_reason null), and `keeps(footer)` says the stage leaves its rows as they
    are (None: a skipped stage, which leaves every row). Reads only the footers."""
    unchanged, others = [], []
    for path in input_files(folder):
        footer = pq.read_metadata(path)
        if not footer.num_rows:
            continue
        stats = footer_stats(footer, "reject_reason") or [None]
        all_alive = all(s is not None and s.has_null_count and s.null_count == footer.row_group(g).num_rows
                        for g, s in enumerate(stats))
        same = all_alive and footer.schema.to_arrow_schema().equals(schema) and (keeps is None or keeps(footer))
        (unchanged if same else others).append(path)
    return unchanged, others


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no bytes written; every write in a run folder makes a new file), or a copy
    where the file system has no links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _alive(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("reject_reason")))


def read_alive(paths: pa.Table) -> pa.Table:
    """The alive rows of the Parquet files named in `paths` (one file per task)."""
    tables = [_alive(pq.read_table(p)) for p in paths.column("path").to_pylist()]
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def read_manifest(items: pa.Table) -> Iterator[pa.Table]:
    """The raw rows of manifest pieces (curate.manifest.manifest_chunks), as Arrow tables of
    ROWS_PER_FILE lines (fewer when media bytes ride along: BLOB_BYTES at most): Ray builds no
    block row by row, and the ingest stage fuses with this."""
    rows: list[dict[str, Any]] = []
    blob_bytes = 0
    for item in items.to_pylist():
        for row in read_lines(item["source"], item["manifest"], item["start"], item["end"], item["first_line"],
                              item.get("format")):
            rows.append(row)
            if row.get("blobs"):
                blob_bytes += sum(len(b) for b in row["blobs"])
            if len(rows) == ROWS_PER_FILE or blob_bytes >= BLOB_BYTES:
                yield pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
                rows, blob_bytes = [], 0
    yield pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
