"""Reply cache: a re-run does not ask the model again for a prompt it already answered.

Keyed by sha256(model, prompt id, task, full prompt text); the prompt text contains the
sample, so an edited sample, an edited prompt file or another model misses the cache.
Only parsed answers are stored (an unparsable reply or a server failure is asked again
next time). SQLite in WAL mode under the run folder; several actors on one machine
share it (writes wait up to `timeout` seconds for the lock).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path


def cache_key(model: str, prompt_id: str, task: str, messages: list[dict[str, str]]) -> str:
    payload = json.dumps([model, prompt_id, task, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class ReplyCache:
    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()
        self.hits = self.misses = 0

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT key, value FROM replies WHERE key IN ({marks})", chunk).fetchall())
        self.hits += len(found)
        self.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[str, str]) -> None:
        if items:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)", list(items.items()))

    def close(self) -> None:
        self.db.close()


class NullCache:
    """Used when stages.score.cache is false."""

    hits = misses = 0

    def get_many(self, keys: list[str]) -> dict[str, str]:
        return {}

    def put_many(self, items: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass
