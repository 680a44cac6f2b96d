"""Manifests are read in pieces by parallel tasks: the pieces must give exactly the file's rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.manifest import manifest_chunks, read_lines


def _rows(chunks):
    return [r for c in chunks for r in read_lines(c["source"], c["manifest"], c["start"], c["end"], c["first_line"])]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 40, 1 << 20])
def test_jsonl_pieces_give_every_line_once_with_its_real_number(tmp_path, chunk_bytes):
    lines = [json.dumps({"id": f"r{i}", "text": "x" * (i * 13 % 90)}).encode() for i in range(50)]
    lines[5] = b""  # a blank line: counted, not a row
    lines[9] = b"not json \xff"  # a bad line is still a row (ingest rejects it)
    lines[20] = lines[20] + b"\r"  # CRLF
    body = b"\n".join(lines)  # no newline after the last line
    path = tmp_path / "m.jsonl"
    path.write_bytes(body)
    whole = list(read_lines("s", path))
    chunks = manifest_chunks("s", path, chunk_bytes)
    assert len(chunks) >= (2 if chunk_bytes < len(body) else 1)
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(body)
    assert all(a["end"] == b["start"] for a, b in zip(chunks, chunks[1:]))
    assert _rows(chunks) == whole
    assert sum(c["lines"] for c in chunks) == body.count(b"\n")  # the progress view's expected rows
    assert [r["line"] for r in whole] == [i + 1 for i in range(50) if i != 5]
    assert whole[8]["raw"] == b"not json \xff" and whole[19]["raw"] == lines[20][:-1]


def test_an_empty_manifest_has_no_pieces(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert manifest_chunks("s", path) == [] and list(read_lines("s", path)) == []


def test_parquet_pieces_are_runs_of_row_groups(tmp_path):
    table = pa.table({"id": [f"r{i}" for i in range(100)], "conversations": [[{"from": "human", "value": str(i)}]
                                                                           for i in range(100)]})
    path = tmp_path / "m.parquet"
    pq.write_table(table, path, row_group_size=9)
    whole = list(read_lines("s", path))
    chunks = manifest_chunks("s", path, chunk_bytes=1)
    assert len(chunks) == pq.ParquetFile(path).metadata.num_row_groups == 12
    assert _rows(chunks) == whole and [r["line"] for r in whole] == list(range(1, 101))
    assert sum(c["lines"] for c in chunks) == 100
    assert json.loads(whole[42]["raw"])["id"] == "r42"
    assert len(manifest_chunks("s", path)) == 1
