"""The run folder: every path a run reads or writes is spelled here, and only here.

  recipe.resolved.yaml      the recipe as run (after --set and --input)
  work/NN-<stage>/          every row the stage produced (Parquet) + _DONE.json marker
  rejects/<stage>.parquet   rows that left the pipeline at that stage
  shards/                   shard-NNNNNN.tar, index.json, contents.parquet, sequences.parquet
  media/                    content-addressed media store (media/urls/: the download URL index)
  download/                 per-URL download logs
  review/                   flagged samples kept for manual review (review/score/: LLM scoring)
  cache/score.sqlite        LLM reply cache
  logs/                     error.log (the traceback of a failed run)
  stats.json, report.html   the run's statistics and its report page

State is written atomically (a temporary file in the same folder, then a rename), so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "_DONE.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder. Pickles cleanly (a stage carries it to its workers)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- the pipeline's own state
    @property
    def work(self) -> Path:
        return self.root / "work"

    def stage_dir(self, index: int, name: str) -> Path:
        return self.work / f"{index:02d}-{name}"

    def stage_dirs(self, name: str) -> list[Path]:
        """Finished or unfinished output folders of the stage called `name` (normally one)."""
        return sorted(p for p in self.work.glob(f"[0-9][0-9]-{name}") if p.is_dir())

    @staticmethod
    def marker(stage_dir: Path) -> Path:
        return stage_dir / MARKER

    @staticmethod
    def tmp(path: Path) -> Path:
        """Where `path` is built before it is renamed into place."""
        return path.with_name(path.name + ".tmp")

    def markers(self) -> list[Path]:
        return sorted(self.work.glob(f"*/{MARKER}"))

    @property
    def rejects_dir(self) -> Path:
        return self.root / "rejects"

    def rejects(self, stage: str) -> Path:
        return self.rejects_dir / f"{stage}.parquet"

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # ---- shards
    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def index(self) -> Path:
        return self.shards / "index.json"

    @property
    def contents(self) -> Path:
        return self.shards / "contents.parquet"

    @property
    def sequences(self) -> Path:
        return self.shards / "sequences.parquet"

    # ---- what stages keep beside their rows
    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def url_index(self) -> Path:
        return self.media / "urls"

    @property
    def download_logs(self) -> Path:
        return self.root / "download"

    def review(self, sub: str = "") -> Path:
        return self.root / "review" / sub if sub else self.root / "review"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def score_cache(self) -> Path:
        return self.root / "cache" / "score.sqlite"

    @classmethod
    def of(cls, path: str | Path) -> "RunLayout":
        """The layout of a run folder, also when given its shards/ folder."""
        path = Path(path)
        if (path / "index.json").exists() and not (path / "shards").exists():
            path = path.parent
        return cls(path)


# ---------------------------------------------------------------------------- atomic writes
def write_text_atomic(path: Path, text: str) -> Path:
    """Write a whole file or nothing: temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2))


def write_jsonl_atomic(path: Path, entries: list[dict[str, Any]], sort_keys: bool = True) -> Path:
    return write_text_atomic(path, "".join(json.dumps(e, ensure_ascii=False, sort_keys=sort_keys) + "\n"
                                           for e in entries))


def write_parquet_atomic(path: Path, table: Any) -> Path:
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's marker, or None when it is missing or unreadable (a crash while writing it)."""
    try:
        marker = json.loads(RunLayout.marker(stage_dir).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None
