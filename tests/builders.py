"""Builders shared by the tests: a record row, a run context, and one stage run on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.records import CORE_SCHEMA
from curate.stages.base import Job, RunContext, Stage


def make_row(rid: str, question: str = "Q", answer: str = "A", source: str = "text", media=None,
             modality: str = "text", **extra: Any) -> dict[str, Any]:
    """One alive record with a single question/answer round."""
    return {"id": rid, "source": source, "origin": "manifest", "manifest": "m.jsonl", "line": 1,
            "modality": modality, "domain": "general",
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            "media": media or [], "meta": "{}", "reject_stage": None, "reject_reason": None,
            "reject_detail": None} | extra


def make_ctx(out_dir: str | Path, **kwargs: Any) -> RunContext:
    return RunContext(out_dir=str(out_dir), **kwargs)


def apply_on_ray(stage: Stage, rows: list[dict[str, Any]], out_dir: str | Path = "/tmp") -> list[dict[str, Any]]:
    """Run one stage over `rows` exactly as the runner does (tasks, actor pool or global plan)."""
    import ray

    from curate.runner import apply_stage

    table = pa.Table.from_pylist([{k: r.get(k) for k in CORE_SCHEMA.names} for r in rows], schema=CORE_SCHEMA)
    out, _ = apply_stage(stage, ray.data.from_arrow(table), Job(None, Path(out_dir), stage.resolved_resources()))
    return out.take_all()
