"""Shared fixtures: one Ray session for the whole run, small real inputs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs it (starting Ray costs ~4 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
