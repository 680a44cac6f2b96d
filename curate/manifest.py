"""Read manifests into raw rows: JSONL, JSON arrays and Parquet, gzip- or zstd-compressed or not.

Every manifest line (JSONL), array element (a `.json` array, read as a stream by
curate.json_array) or table row (Parquet) becomes exactly one row, even one that is not valid
JSON or not UTF-8: parsing happens in the ingest stage, which turns bad rows into reject rows
at their real position (the line of a JSONL file, the element or table row otherwise). A
manifest file that cannot be opened, or is none of these formats, is an error before the run
starts (see check_manifests). The shapes a row may have are curate.manifest_formats'.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from curate.errors import UserError
from curate.json_array import JSONArrayError, count_elements, iter_elements
from curate.manifest_formats import BLOB_KEY, wav_bytes

RAW_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("manifest", pa.string()),
    ("line", pa.int64()),
    ("raw", pa.binary()),
    ("blobs", pa.list_(pa.large_binary())),  # a Parquet row's binary values, {"$blob": i} in `raw`
])

COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip", b"\x89HDF": "HDF5"}
#: bytes read (after decompression) to tell JSONL from a JSON array
SNIFF_BYTES = 1 << 20
#: a Parquet read batch (rows): media bytes make rows large
PARQUET_BATCH_ROWS = 256


def is_parquet(path: str | Path) -> bool:
    if str(path).endswith((".parquet", ".pq")):
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def compression_of(path: str | Path) -> str | None:
    """"gzip" or "zstd" from the file's first bytes (not its name), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name in COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return name
    for magic, name in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise UserError(f"{path} is a {name} file; a manifest is JSONL, a JSON array or Parquet, "
                            f"plain or compressed with gzip or zstd")
    return None


def open_manifest(path: str | Path) -> BinaryIO:
    """The manifest's bytes, decompressed as they are read."""
    codec = compression_of(path)
    if codec == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if codec == "zstd":
        return pa.CompressedInputStream(pa.OSFile(str(path)), "zstd")  # type: ignore[return-value]
    return open(path, "rb")


def manifest_format(path: str | Path) -> str:
    """"parquet", "jsonl" or "array"; a UserError for any other file, before the run starts."""
    if is_parquet(path):
        return "parquet"
    try:
        with open_manifest(path) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read the manifest ({e})") from None
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not text:
        return "jsonl"  # an empty manifest: no rows, and the run says so after ingest
    if text[:1] == b"[":
        return "array"
    lines = [ln for ln in text.split(b"\n")[:-1 if len(head) == SNIFF_BYTES else None][:20] if ln.strip()]
    if text[:1] == b"{" and (not lines or any(_is_object(ln) for ln in lines)):
        return "jsonl"
    if text[:1] == b"{":
        hint = ("it looks like an InternVL meta file: pass it with `curate run RECIPE --meta FILE` or "
                "`sources_from: FILE` in the recipe" if b'"annotation"' in head else
                "it looks like one JSON object spread over several lines")
        raise UserError(f"{path}: not a manifest: {hint}. A manifest is JSONL (one JSON object per line), a "
                        f"JSON array of objects, or Parquet (docs/manifests.md)")
    raise UserError(f"{path}: not a manifest: it begins with {text[:24]!r}. A manifest is JSONL (one JSON "
                    f"object per line), a JSON array of objects, or Parquet, plain or gzip/zstd-compressed "
                    f"(docs/manifests.md)")


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def check_manifests(sources: list[Any], base: Path) -> dict[str, list[Path]]:
    """Expand each source's globs; fail early with the source name if nothing is there, or if a
    file is not a manifest (its format is sniffed from its first bytes)."""
    found: dict[str, list[Path]] = {}
    for src in sources:
        paths = src.manifest_paths(base)
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise FileNotFoundError(
                f"source '{src.name}': manifest not found: {missing or src.manifests} "
                f"(relative paths resolve against {base})")
        for p in paths:
            try:
                manifest_format(p)
            except UserError as e:
                raise UserError(f"source '{src.name}': {e}") from None
        found[src.name] = paths
    return found


#: a manifest is read in pieces of about this many bytes, one task each (a 1M-line JSONL file
#: would otherwise be read, parsed and written by a single task on one core)
CHUNK_BYTES = 16 << 20


def manifest_chunks(source: str, manifest: str | Path,
                    chunk_bytes: int = CHUNK_BYTES) -> list[dict[str, Any]]:
    """The pieces of one manifest that tasks read in parallel.

    JSONL: byte ranges [start, end) that begin at a line start, with the number of their first
    line (counted here, so reject messages keep the file's real line numbers; one pass over
    the file, chunk_bytes in memory at a time). A JSON array: byte ranges that end right after
    a top-level comma, with the number of their first element (one pass of the structural
    scanner, which also finds a broken array before any row is read). Parquet: runs of row
    groups, from the footer. A compressed file is one piece (a gzip or zstd stream cannot be
    entered in the middle); the pass still counts its rows. `lines` is each piece's newline
    count (arrays: elements; Parquet: rows), the progress view's expected rows.
    """
    manifest = str(manifest)
    chunks: list[dict[str, Any]] = []
    fmt = manifest_format(manifest)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(manifest).metadata
        first, group, size = 1, 0, 0
        for g in range(meta.num_row_groups):
            size += meta.row_group(g).total_byte_size
            if size >= chunk_bytes or g == meta.num_row_groups - 1:
                rows = sum(meta.row_group(k).num_rows for k in range(group, g + 1))
                chunks.append({"source": source, "manifest": manifest, "start": group, "end": g + 1,
                               "first_line": first, "lines": rows, "format": fmt})
                first += rows
                group, size = g + 1, 0
        return chunks
    compressed = compression_of(manifest) is not None
    if fmt == "array":
        with open_manifest(manifest) as f:
            try:
                pieces = count_elements(f, 1 << 62 if compressed else chunk_bytes)
            except JSONArrayError as e:
                raise UserError(f"{manifest} is not a well-formed JSON array: {e}") from None
        first = 1
        for start, end, n in pieces:
            chunks.append({"source": source, "manifest": manifest, "start": start,
                           "end": None if compressed else end, "first_line": first, "lines": n, "format": fmt})
            first += n
        return chunks
    if compressed:
        with open_manifest(manifest) as f:
            lines, size = 0, 0
            for block in iter(lambda: f.read(chunk_bytes), b""):
                lines, size = lines + block.count(b"\n"), size + len(block)
        return [{"source": source, "manifest": manifest, "start": 0, "end": None, "first_line": 1,
                 "lines": lines, "format": fmt}] if size else []
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
                           "lines": lines, "format": fmt})
            line += lines
            start = end
    return chunks


def read_lines(source: str, manifest: str | Path, start: int = 0, end: int | None = None,
               first_line: int = 1, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield one raw row per manifest line (JSONL), array element or table row (Parquet).

    start/end/first_line select one piece from manifest_chunks: a byte range of a JSONL or
    array file, or a range of row groups of a Parquet file; the default is the whole file.
    `fmt` is manifest_format's answer (sniffed when not given).
    """
    manifest = str(manifest)
    fmt = fmt or manifest_format(manifest)
    if fmt == "parquet":
        yield from _parquet_rows(source, manifest, start, end, first_line)
        return
    if fmt == "array":
        with open_manifest(manifest) as f:
            if start:
                f.seek(start)
            try:
                for i, element in enumerate(iter_elements(f, start, end), start=first_line):
                    yield {"source": source, "manifest": manifest, "line": i, "raw": element}
            except JSONArrayError as e:
                raise UserError(f"{manifest} is not a well-formed JSON array: {e}") from None
        return
    if compression_of(manifest) is not None:
        with open_manifest(manifest) as f:
            for i, line in enumerate(_stream_lines(f), start=first_line):
                if line.strip():
                    yield {"source": source, "manifest": manifest, "line": i, "raw": line.rstrip(b"\r\n")}
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


def _stream_lines(f: BinaryIO, block_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a stream that has read() only (pyarrow's decompressing stream)."""
    rest = b""
    for block in iter(lambda: f.read(block_bytes), b""):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _parquet_rows(source: str, manifest: str, start: int, end: int | None,
                  first_line: int) -> Iterator[dict[str, Any]]:
    """Table rows as JSON; binary values (Hugging Face's {bytes, path} media) travel beside it."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(manifest)
    groups = list(range(start, pf.metadata.num_row_groups if end is None else end))
    i = first_line
    for batch in pf.iter_batches(row_groups=groups, batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            blobs: list[bytes] = []
            raw = json.dumps(_lift_blobs(row, blobs), ensure_ascii=False, default=str).encode()
            yield {"source": source, "manifest": manifest, "line": i, "raw": raw, "blobs": blobs or None}
            i += 1


def _lift_blobs(value: Any, blobs: list[bytes]) -> Any:
    """`value` with each bytes value replaced by {"$blob": index into blobs}; decoded audio
    ({array, sampling_rate}) becomes WAV bytes, so no row carries thousands of floats as JSON."""
    if isinstance(value, (bytes, bytearray)):
        blobs.append(bytes(value))
        return {BLOB_KEY: len(blobs) - 1}
    if isinstance(value, dict):
        if isinstance(value.get("array"), list) and value.get("bytes") is None and "sampling_rate" in value:
            try:
                data = wav_bytes(value["array"], value["sampling_rate"])
            except ValueError:
                pass  # left as it is: ingest rejects it with the reason
            else:
                value = {"bytes": data, "path": value.get("path")}
        return {k: _lift_blobs(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_lift_blobs(v, blobs) for v in value]
    return value


def read_all(sources: dict[str, list[Path]]) -> pa.Table:
    """All raw rows of all manifests (single process; used by tests and small runs)."""
    rows = [r for name, paths in sources.items() for p in paths for r in read_lines(name, p)]
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
