"""The record: one Arrow row per sample, the unit every stage reads and writes.

Stages add columns (scores, token ids) but never rename or drop the core ones. A row
that leaves the pipeline keeps travelling to the end of its stage with `reject_reason`
set; the runner moves it to `<out>/rejects/` (see curate.runner).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pyarrow as pa

from filters.placeholders import PLACEHOLDER_RE, PLACEHOLDER_SPLIT_RE, PLACEHOLDERS

__all__ = ["TURN_TYPE", "MEDIA_TYPE", "MEDIA_KINDS", "PLACEHOLDERS", "PLACEHOLDER_RE", "PLACEHOLDER_SPLIT_RE",
           "MODALITIES", "CORE_SCHEMA", "REJECT_COLUMNS", "record_id", "MEMORY_ADDRESS_RE", "reject",
           "RowError", "is_rejected", "empty_media", "text_of", "dumps_meta"]

TURN_TYPE = pa.struct([("from", pa.string()), ("value", pa.string())])

MEDIA_TYPE = pa.struct(
    [
        ("kind", pa.string()),  # image | video | audio
        ("ref", pa.string()),  # as written in the manifest (path or URL)
        ("path", pa.string()),  # content-addressed store path once resolved
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("mime", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("grid_w", pa.int32()),  # InternVL tile grid (columns)
        ("grid_h", pa.int32()),  # InternVL tile grid (rows)
        ("tiles", pa.int32()),  # tiles incl. thumbnail; frames for a video
        ("frames", pa.list_(pa.string())),  # video: store paths of sampled JPEG frames
        ("duration", pa.float64()),  # seconds (video, audio)
    ]
)

MEDIA_KINDS = ("image", "video", "audio")
# PLACEHOLDERS, PLACEHOLDER_RE and PLACEHOLDER_SPLIT_RE are filters.placeholders', re-exported here;
# the label of an untrained token, IGNORE, is the shard format's (packing.format)
MODALITIES = ("text", "image", "multi_image", "video", "audio", "audio_qa", "interleaved")

CORE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("orig_id", pa.string()),  # the manifest's own id (or "<manifest file>:<line>"); children add "#..."
        ("source", pa.string()),
        ("origin", pa.string()),  # "manifest" or "synthesized:<stage>"
        ("manifest", pa.string()),
        ("line", pa.int64()),  # 1-based line (or row) in the manifest
        ("modality", pa.string()),
        ("domain", pa.string()),
        ("conversations", pa.list_(TURN_TYPE)),
        ("media", pa.list_(MEDIA_TYPE)),
        ("meta", pa.string()),  # JSON of manifest fields we do not interpret
        ("reject_stage", pa.string()),
        ("reject_reason", pa.string()),
        ("reject_detail", pa.string()),
    ]
)

REJECT_COLUMNS = ["id", "orig_id", "source", "origin", "modality", "manifest", "line",
                  "reject_stage", "reject_reason", "reject_detail"]


def record_id(source: str, key: str) -> str:
    """Stable id: the same source and original key give the same id on every run."""
    return hashlib.sha256(f"{source}\x00{key}".encode()).hexdigest()[:24]


MEMORY_ADDRESS_RE = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def reject(row: dict[str, Any], stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    """Mark a row as leaving the pipeline; the runner writes it to the rejects table.

    Memory addresses that library messages carry ("<_io.BytesIO object at 0x7f...>") are cut,
    so the same input gives byte-identical rejects on every run.
    """
    row["reject_stage"] = stage
    row["reject_reason"] = reason
    row["reject_detail"] = MEMORY_ADDRESS_RE.sub("", detail)[:2000]
    return row


def reject_where(table: pa.Table, mask: Any, stage: str, reasons: Any, details: Any = "") -> pa.Table:
    """`reject` on whole columns: the rows in `mask` that are still alive leave at `stage`.

    `mask` is a boolean array (numpy or Arrow; null counts as False); `reasons` and `details`
    are one string for every row or an array with one per row of `table` (values of the
    other rows are not read). Details are cleaned as `reject` cleans them. Rows already
    rejected keep their first reason; the table comes back unchanged when no row leaves.
    """
    import pyarrow.compute as pc

    if not len(table):
        return table
    hit = pc.and_(pc.fill_null(_column(mask, pa.bool_(), len(table)), False),
                  pc.is_null(table.column("reject_reason")))
    if not pc.any(hit).as_py():
        return table
    detail = pc.replace_substring_regex(_column(details, pa.string(), len(table)),
                                        pattern=MEMORY_ADDRESS_RE.pattern, replacement="")
    values = {"reject_stage": _column(stage, pa.string(), len(table)),
              "reject_reason": _column(reasons, pa.string(), len(table)),
              "reject_detail": pc.utf8_slice_codeunits(detail, 0, 2000)}
    for name, new in values.items():
        old = table.column(name)
        merged = pc.if_else(hit, new.cast(old.type), old)
        table = table.set_column(table.schema.get_field_index(name), name, merged)
    return table


def _column(values: Any, type_: pa.DataType, n: int) -> pa.Array | pa.ChunkedArray:
    """`values` as an Arrow array of n rows: a scalar repeated, or an array as it is."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, (str, bool)):
        return pa.repeat(pa.scalar(values, type_), n)
    return pa.array(values, type_)


class RowError(ValueError):
    """A problem with one row that rejects it: `reason` is the reject reason, the message its detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def is_rejected(row: dict[str, Any]) -> bool:
    return row.get("reject_reason") is not None


def empty_media(kind: str, ref: str) -> dict[str, Any]:
    return {name: None for name in MEDIA_TYPE.names} | {"kind": kind, "ref": ref}


def text_of(row: dict[str, Any], speaker: str | None = None) -> str:
    """All turn texts of a record joined by newlines (optionally only one speaker)."""
    turns = row.get("conversations") or []
    return "\n".join(t["value"] or "" for t in turns if speaker is None or t["from"] == speaker)


def dumps_meta(meta: dict[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)
