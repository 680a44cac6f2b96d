"""The install story: the CPU pins live in `make setup`, so the `gpu` extra can resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_base_install_pins_nothing_vllm_pins_too():
    """vLLM pins its own torch, torchvision and transformers: an == pin of ours would make
    `pip install -e '.[gpu]'` impossible to resolve (it was, with torch==2.14.1)."""
    deps = PYPROJECT["project"]["dependencies"]
    pinned = [d for d in deps if re.match(r"(torch|torchvision|transformers)\s*==", d)]
    assert not pinned, pinned
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in makefile  # the CPU build is pinned where it is installed
    assert any(d.startswith("vllm") for d in PYPROJECT["project"]["optional-dependencies"]["gpu"])


@pytest.mark.skipif(os.environ.get("OMNICURATE_TEST_GPU_EXTRA") != "1",
                    reason="resolves vLLM and its CUDA wheels (GBs on a cold pip cache): "
                           "set OMNICURATE_TEST_GPU_EXTRA=1")
def test_the_gpu_extra_resolves():
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "-e", f"{ROOT}[gpu]"],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
