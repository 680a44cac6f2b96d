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


def read_lines(source: str, manifest: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one raw row per manifest line (JSONL) or per table row (Parquet)."""
    manifest = str(manifest)
    if is_parquet(manifest):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(manifest).to_pylist(), start=1):
            yield {"source": source, "manifest": manifest, "line": i,
                   "raw": json.dumps(row, ensure_ascii=False, default=str).encode()}
        return
    with open(manifest, "rb") as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                yield {"source": source, "manifest": manifest, "line": i, "raw": line.rstrip(b"\r\n")}


def read_all(sources: dict[str, list[Path]]) -> pa.Table:
    """All raw rows of all manifests (single process; used by tests and small runs)."""
    rows = [r for name, paths in sources.items() for p in paths for r in read_lines(name, p)]
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
