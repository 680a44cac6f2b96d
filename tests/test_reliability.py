"""What must keep working: a second run of the same recipe gives byte-identical output even when a
Ray worker is killed under it (Ray retries the task), and a killed driver resumes to the same shards."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import demo_overrides

ROOT = Path(__file__).resolve().parents[1]
OFF = ("stages.transcribe.enabled=false", "stages.audio_qa.enabled=false")
pytestmark = pytest.mark.slow


def command(demo_dir: Path, out: Path) -> list[str]:
    sets = sum((["--set", s] for s in demo_overrides(demo_dir, *OFF)), [])
    return [sys.executable, "-m", "curate.cli", "run", str(ROOT / "recipes" / "sft-stage3.yaml"), "--out", str(out),
            *sets]


def start(demo_dir: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, CURATE_PROGRESS="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(command(demo_dir, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def digests(run: Path, *folders: str) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted((run / f).rglob("*")) if p.is_file()}


def review_lines(run: Path) -> list[str]:
    return sorted(line for p in (run / "review").rglob("*.jsonl") for line in p.read_text().splitlines())


def wait_for(predicate, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def kill_group(proc: subprocess.Popen) -> None:
    """Clean up what a killed driver left (its local Ray processes share its session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def clean_run(demo_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    finish(start(demo_small, out))
    return out


def test_a_killed_driver_resumes_to_the_same_shards(demo_small, clean_run, tmp_path):
    out = tmp_path / "killed"
    proc = start(demo_small, out)
    wait_for(lambda: any(out.glob("work/*-filter/_DONE.json")) or proc.poll() is not None)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-run
    proc.wait()
    kill_group(proc)
    assert not (out / "shards" / "index.json").exists()
    finish(start(demo_small, out))
    assert digests(out, "shards") == digests(clean_run, "shards")
    stats = __import__("json").loads((out / "stats.json").read_text())
    assert "ingest" in stats["resumed_stages"] and "shard" not in stats["resumed_stages"]


def test_a_killed_ray_worker_is_retried_and_the_output_is_byte_identical(demo_small, clean_run, tmp_path):
    """A second run of the same recipe, with a media task worker SIGKILLed mid-stage: Ray retries
    it, and shards, rejects and review entries equal the clean run's byte for byte."""
    out = tmp_path / "worker"
    proc = start(demo_small, out)
    try:
        wait_for(lambda: any(out.glob("work/*-download/_DONE.json")))  # the media stage is starting
        victims: list[int] = []

        def find_worker() -> bool:  # a task worker of the media stage (not Ray's own agents)
            ps = subprocess.run(["pgrep", "-s", str(os.getsid(proc.pid)), "-f", "ray::.*MediaStage"],
                                capture_output=True, text=True).stdout.split()
            victims.extend(int(p) for p in ps)
            return bool(victims)

        wait_for(find_worker, timeout=120)
        os.kill(victims[0], signal.SIGKILL)
        finish(proc)
    finally:
        kill_group(proc)
    folders = ("shards", "rejects")
    assert digests(out, *folders) == digests(clean_run, *folders)
    assert any(name.startswith("rejects/") for name in digests(clean_run, "rejects"))
    # review files are written per batch (their names follow Ray's batching): the entries are equal
    assert review_lines(clean_run) == review_lines(out) != []
