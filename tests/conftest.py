"""Shared fixtures: one Ray session for the whole run, small real inputs."""

from __future__ import annotations

import os
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs it (starting Ray costs ~4 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """The small demo corpus (real images, ffmpeg videos, espeak-ng speech, broken files)."""
    from curate.demo import build_demo

    out = tmp_path_factory.mktemp("demo")
    build_demo(out, small=True)
    return out


def demo_overrides(demo_dir, *extra: str) -> list[str]:
    """Point sft-stage3's sources and tokenizer at a demo folder."""
    sets = [f"stages.tokenize.tokenizer={demo_dir}/tokenizer"]
    for name in ("text", "image", "multi-image", "video", "audio"):
        sets.append(f"sources.demo-{name}.manifests=[{demo_dir}/{name.replace('-', '_')}.jsonl]")
    return sets + list(extra)


@pytest.fixture(scope="session")
def tone(tmp_path_factory):
    """A 3 s sine clip (16 kHz FLAC) for transcribe tests with a fake Whisper: long enough to
    say their fake transcripts (19 Chinese characters), which the hallucination check's rate
    rule would reject on a 1 s clip."""
    path = tmp_path_factory.mktemp("tone") / "tone.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", "-f", "lavfi", "-i",
                    "sine=frequency=300:sample_rate=16000", "-t", "3", str(path)], check=True)
    return str(path)
