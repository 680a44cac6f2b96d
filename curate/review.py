"""Review files: flagged samples kept for a person to check before they are removed for good.

InternVL 2.5 (sec. 4.3) reviews flagged samples by hand before final removal, so stages that
reject on a model's or a heuristic's judgement write each flagged sample with its scores to
`<out>/review/<stage>/<hash of the ids>.jsonl` (the same batch always gives the same file).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from curate.layout import RunLayout, write_jsonl_atomic


def write_review(layout: RunLayout, stage: str, entries: list[dict[str, Any]]) -> Path | None:
    """Write one batch's entries atomically; entries need an `id`. Returns the file (None: nothing)."""
    if not entries:
        return None
    key = hashlib.sha256("\n".join(e["id"] for e in entries).encode()).hexdigest()[:16]
    return write_jsonl_atomic(layout.review(stage) / f"{key}.jsonl", entries)


def clear_review(layout: RunLayout, stage: str) -> None:
    """A re-run of a stage rewrites its review files; old ones would double-count."""
    shutil.rmtree(layout.review(stage), ignore_errors=True)
