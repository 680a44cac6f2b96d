"""User errors end as one paragraph and exit code 2, before any work; --debug shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import main
from tests.conftest import demo_overrides

RECIPE = str(Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml")
OFF = ["stages.transcribe.enabled=false", "stages.audio_qa.enabled=false"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def sets(demo_dir, *extra):
    return sum((["--set", s] for s in demo_overrides(demo_dir, *OFF, *extra)), [])


@pytest.mark.parametrize("case", ["out_is_a_file", "unwritable_out", "unreachable_cluster", "missing_tokenizer"])
def test_user_errors_are_one_paragraph_with_exit_code_2(demo_small, tmp_path, case):
    (tmp_path / "a-file").write_text("x")
    out = {"out_is_a_file": tmp_path / "a-file", "unwritable_out": Path("/proc/omnicurate-run")}.get(case,
                                                                                                   tmp_path / "out")
    extra = ["--address", "127.0.0.1:9"] if case == "unreachable_cluster" else []
    more = ["stages.tokenize.tokenizer=/nonexistent/tokenizer"] if case == "missing_tokenizer" else []
    result = run("run", RECIPE, "--out", str(out), *extra, *sets(demo_small, *more))
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "Traceback" not in text and len(text.splitlines()) == 1
    expected = {"out_is_a_file": "is a file", "unwritable_out": "cannot be written",
                "unreachable_cluster": "cannot reach the Ray cluster", "missing_tokenizer": "stages.tokenize.tokenizer"}
    assert expected[case] in text
    if case == "missing_tokenizer":
        assert not (tmp_path / "out" / "work").exists()  # nothing ran


def test_debug_shows_the_traceback(demo_small, tmp_path):
    result = run("--debug", "run", RECIPE, "--out", str(tmp_path / "o"),
                 *sets(demo_small, "stages.tokenize.tokenizer=/x"))
    assert result.exit_code != 0 and isinstance(result.exception, FileNotFoundError)
