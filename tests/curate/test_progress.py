"""The live view: rows counted from the Parquet files being written, plain lines off a terminal."""

from __future__ import annotations

import io
import logging
import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from curate.progress import ProgressView, RichView, count_rows, make_view, quiet_terminal, summary_line

MARKER = {"stage": "filter", "rows": 300, "kept": 290, "rejected": {"repetitive": 7, "lang": 3}, "seconds": 2.0}


def test_rows_done_are_read_from_written_parquet_and_half_files_are_skipped(tmp_path):
    pq.write_table(pa.table({"x": list(range(7))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": list(range(5))}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 half written")
    assert count_rows(tmp_path) == 12
    assert count_rows(tmp_path / "missing") == 0


def test_plain_view_prints_one_summary_per_stage_with_model_and_rate(tmp_path):
    out = io.StringIO()
    view = ProgressView(out, poll_s=0.01)
    view.stage_started("filter", 300, model="lid.176.ftz", device="cpu", output=tmp_path)
    pq.write_table(pa.table({"x": list(range(40))}), tmp_path / "a.parquet")
    deadline = time.monotonic() + 5
    while view._stage["done"] != 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert view._stage["done"] == 40
    assert "40/300 rows" in view.progress_text(view._stage) and "ETA" in view.progress_text(view._stage)
    view.stage_finished(MARKER)
    lines = out.getvalue().splitlines()
    assert lines == ["stage filter [lid.176.ftz on cpu]: 300 rows, 290 kept, 10 rejected in 2.0s, 150 rows/s"]


def test_quiet_prints_nothing_and_a_pipe_gets_the_plain_view(tmp_path):
    out = io.StringIO()
    view = make_view("quiet", out)
    view.stage_started("ingest", None, output=tmp_path)
    view.stage_finished(MARKER | {"stage": "ingest"})
    assert out.getvalue() == ""
    assert type(make_view("auto", io.StringIO())) is ProgressView


def test_rich_view_replaces_the_live_line_with_the_summary(tmp_path):
    out = io.StringIO()
    view = RichView(out, poll_s=0.01)
    view.stage_started("dedupe", 10, output=tmp_path)
    view.stage_finished(MARKER | {"stage": "dedupe", "skipped": "no text"})
    assert view.lines == [summary_line(MARKER | {"stage": "dedupe", "skipped": "no text"})]
    assert "(skipped: no text)" in out.getvalue()


def test_quiet_terminal_moves_fd2_and_python_stdout_to_a_file_and_back(tmp_path, capfd):
    log = tmp_path / "logs" / "ray-output.log"
    view = ProgressView(sys.stdout)
    handler = logging.StreamHandler(sys.stderr)  # what logging.basicConfig installs
    logging.getLogger().addHandler(handler)
    try:
        with quiet_terminal(log):
            os.write(2, b"ray core says hello\n")
            print("(raylet) WARNING: many workers")  # how the Ray driver prints raylet warnings
            view.emit("stage x: 1 rows")  # the view keeps the stream it was given
            logging.getLogger("curate").warning("stage y skipped")
    finally:
        logging.getLogger().removeHandler(handler)
    os.write(2, b"after\n")
    assert log.read_text().splitlines() == ["ray core says hello", "(raylet) WARNING: many workers",
                                            "stage y skipped"]
    captured = capfd.readouterr()
    assert captured.err == "after\n" and captured.out == "stage x: 1 rows\n"
    assert handler.stream is sys.stderr

