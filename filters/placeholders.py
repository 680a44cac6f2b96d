"""The media placeholders of a conversation's text: `<image>`, `<video>`, `<audio>` mark where
each media item of the sample goes (ingest counts them, the filters check them, tokenize
expands them). curate.records re-exports them."""

from __future__ import annotations

import re

PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))
PLACEHOLDER_SPLIT_RE = re.compile(f"({PLACEHOLDER_RE.pattern})")  # re.split keeps the placeholders
