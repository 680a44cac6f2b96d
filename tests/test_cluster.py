"""The cluster section of docs/cluster.md, word for word: a head and a worker node on loopback, a job
submitted with `make submit`, and shards identical to a local run of the same recipe."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SET = "stages.transcribe.enabled=false stages.audio_qa.enabled=false"  # the model stages are tested elsewhere

# the README block starts two nodes and submits a job: minutes on 2 cores, more when the machine is shared
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1500)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_nodes_on_port(port: str) -> None:
    """SIGKILL every process whose full command line names the cluster's port (GCS, raylets,
    agents, workers; pkill -f reads a truncated command line and misses the GCS), and forget the
    cluster so a later `ray.init()` without an address does not try to join it."""
    import signal

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f":{port} " in cmd + " " or f"gcs_server_port={port}" in cmd or f"port={port} " in cmd + " ":
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass
    current = Path("/tmp/ray/ray_current_cluster")
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


def readme_cluster_commands() -> list[str]:
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = text.split("<!-- CLUSTER_BEGIN -->", 1)[1].split("<!-- CLUSTER_END -->", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("```")]


def shard_digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "shards").rglob("*")) if p.is_file()}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_readme_cluster_section_gives_the_local_shards(demo_small, tmp_path):
    commands = readme_cluster_commands()
    assert commands[0].startswith("export HEAD=") and commands[-1] == "make ray-stop"
    assert "ray-stop:" in (ROOT / "Makefile").read_text()
    out = f"runs/test-cluster-{os.getpid()}"
    # make variables from the environment: a small input keeps the test short (the README runs the demo)
    sets = f"{SET} stages.tokenize.tokenizer={demo_small}/tokenizer"
    env = dict(os.environ, HEAD="127.0.0.1", RAY_PORT=str(free_port()), DASHBOARD_PORT=str(free_port()),
               DASHBOARD_HOST="127.0.0.1", RAY_START_ARGS="--num-cpus=1 --node-ip-address=127.0.0.1", SET=sets,
               input=str(demo_small / "image.jsonl"), RAY_USAGE_STATS_ENABLED="0",
               # two nodes on one machine: each dashboard agent needs its own HTTP port (default 52365)
               RAY_HEAD_ARGS=f"--dashboard-agent-listen-port={free_port()}",
               RAY_WORKER_ARGS=f"--dashboard-agent-listen-port={free_port()}")
    env.pop("RAY_ADDRESS", None)
    script = "\n".join(["set -e"] + commands[1:-1]).replace("out=runs/sft3-cluster", f"out={out}")
    try:
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode and "No available agent to submit job" in done.stdout + done.stderr:
            # Ray's job agent on the new head never registered (seen on an overloaded 2-core machine,
            # after three submits 15 s apart): an environment problem, not a wrong README
            pytest.skip("the head's job agent never came up; rerun on a less loaded machine")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert re.search(r"Job '\S+' succeeded", done.stdout + done.stderr)
    finally:
        # `make ray-stop` (the README's last line) stops every Ray process of the machine, this test
        # session's own Ray included; stop only the two nodes started here, found by their port.
        stop_nodes_on_port(env["RAY_PORT"])
    local = tmp_path / "local"
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "curate"), "run", "sft-stage3", "--out", str(local),
                          "--input", env["input"], *sum((["--set", s] for s in sets.split()), [])], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    try:
        assert shard_digests(ROOT / out) == shard_digests(local)
    finally:
        shutil.rmtree(ROOT / out, ignore_errors=True)
