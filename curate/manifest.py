"""Read manifests (LLaVA/InternVL JSONL or Parquet) into raw line rows.

Every manifest line becomes exactly one row, even one that is not valid JSON or not UTF-8:
parsing happens in the ingest stage, which turns bad lines into reject rows. A manifest
file that cannot be opened at all is an error before the run starts (see check_manifests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

RAW_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("manifest", pa.string()),
    ("line", pa.int64()),
    ("raw", pa.binary()),
])


def is_parquet(path: str | Path) -> bool:
    return str(path).endswith((".parquet", ".pq"))


def check_manifests(sources: list[Any], base: Path) -> dict[str, list[Path]]:
    """Expand each source's globs; fail early with the source name if nothing is there."""
    found: dict[str, list[Path]] = {}
    for src in sources:
        paths = src.manifest_paths(base)
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise FileNotFoundError(
                f"source '{src.name}': manifest not found: {missing or src.manifests} "
                f"(relative paths resolve against {base})")
        found[src.name] = paths
    return found


#: a manifest is read in pieces of about this many bytes, one task each (a 1M-line JSONL file
#: would otherwise be read, parsed and written by a single task on one core)
CHUNK_BYTES = 16 << 20


def manifest_chunks(source: str, manifest: str | Path, chunk_bytes: int = CHUNK_BYTES) -> list[dict[str, Any]]:
    """The pieces of one manifest that tasks read in parallel.

    JSONL: byte ranges [start, end) that begin at a line start, with the number of their first
    line (counted here, so reject messages keep the file's real line numbers; one pass over
    the file, chunk_bytes in memory at a time). Parquet: runs of row groups, from the footer.
    `lines` is each piece's newline count (Parquet: rows), the progress view's expected rows.
    """
    manifest = str(manifest)
    chunks: list[dict[str, Any]] = []
    if is_parquet(manifest):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(manifest).metadata
        first, group, size = 1, 0, 0
        for g in range(meta.num_row_groups):
            size += meta.row_group(g).total_byte_size
            if size >= chunk_bytes or g == meta.num_row_groups - 1:
                rows = sum(meta.row_group(k).num_rows for k in range(group, g + 1))
                chunks.append({"source": source, "manifest": manifest, "start": group, "end": g + 1,
                               "first_line": first, "lines": rows})
                first += rows
                group, size = g + 1, 0
        return chunks
    total = Path(manifest).stat().st_size
    start, line = 0, 1
    with open(manifest, "rb") as f:
        while start < total:
            f.seek(start)
            data = f.read(chunk_bytes)
            end = start + len(data)
            if end < total and not data.endswith(b"\n"):
                rest = f.readline()  # finish the line the piece stops in
                data += rest
                end += len(rest)
            lines = data.count(b"\n")
            chunks.append({"source": source, "manifest": manifest, "start": start, "end": end, "first_line": line,
                           "lines": lines})
            line += lines
            start = end
    return chunks


def read_lines(source: str, manifest: str | Path, start: int = 0, end: int | None = None,
               first_line: int = 1) -> Iterator[dict[str, Any]]:
    """Yield one raw row per manifest line (JSONL) or per table row (Parquet).

    start/end/first_line select one piece from manifest_chunks: a byte range of a JSONL file,
    or a range of row groups of a Parquet file; the default is the whole file.
    """
    manifest = str(manifest)
    if is_parquet(manifest):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(manifest)
        groups = list(range(start, pf.metadata.num_row_groups if end is None else end))
        i = first_line
        for batch in pf.iter_batches(row_groups=groups, batch_size=1024):
            for row in batch.to_pylist():
                yield {"source": source, "manifest": manifest, "line": i,
                       "raw": json.dumps(row, ensure_ascii=False, default=str).encode()}
                i += 1
        return
    with open(manifest, "rb") as f:
        f.seek(start)
        pos = start
        for i, line in enumerate(f, start=first_line):
            if end is not None and pos >= end:
                break
            pos += len(line)
            if line.strip():
                yield {"source": source, "manifest": manifest, "line": i, "raw": line.rstrip(b"\r\n")}


def read_all(sources: dict[str, list[Path]]) -> pa.Table:
    """All raw rows of all manifests (single process; used by tests and small runs)."""
    rows = [r for name, paths in sources.items() for p in paths for r in read_lines(name, p)]
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
