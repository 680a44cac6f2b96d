"""Ingest: parse raw manifest lines into records, checking conversations and placeholders.

Accepts the LLaVA / InternVL conversation format:
  {"id": ..., "image": str | [str], "video": ..., "audio": ...,
   "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}
`user`/`assistant` are accepted as aliases of `human`/`gpt`. One image with no `<image>`
placeholder gets one prepended to the first human turn (as LLaVA does); any other
mismatch between media items and placeholders is a reject.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, ClassVar

import pyarrow as pa

from curate.records import CORE_SCHEMA, MEDIA_KINDS, PLACEHOLDERS, RowError, dumps_meta, empty_media, record_id, reject
from curate.stages.base import Resources, Stage

ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}
KNOWN_KEYS = {"id", "conversations", *MEDIA_KINDS}
LOOSE_ID_RE = re.compile(r'"id"\s*:\s*"([^"\\]{1,200})"')


class RecordError(RowError):
    """A manifest row that is not a usable sample; `reason` is the reject reason."""


def parse_conversations(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise RecordError("missing_conversations", "no 'conversations' field")
    if not isinstance(value, list) or not value:
        raise RecordError("malformed_conversations", "'conversations' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError("malformed_conversations", f"turn {i} needs 'from' and 'value', got {str(turn)[:80]!r}")
        role = ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError("malformed_conversations", f"turn {i}: unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise RecordError("malformed_conversations", f"turn {i}: 'value' must be a string")
        turns.append({"from": role, "value": turn["value"]})
    if not any(t["from"] == "gpt" for t in turns) or not any(t["from"] == "human" for t in turns):
        raise RecordError("malformed_conversations", "a sample needs at least one human and one gpt turn")
    return turns


def parse_media(obj: dict[str, Any]) -> list[dict[str, Any]]:
    media = []
    for kind in MEDIA_KINDS:
        value = obj.get(kind)
        if value is None:
            continue
        refs = [value] if isinstance(value, str) else value
        if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
            raise RecordError("malformed_media", f"'{kind}' must be a path/URL or a list of them")
        media.extend(empty_media(kind, r) for r in refs)
    return media


def check_placeholders(turns: list[dict[str, str]], media: list[dict[str, Any]]) -> None:
    """Placeholders must match media items; one image with none gets one prepended."""
    for kind, tag in PLACEHOLDERS.items():
        n_items = sum(m["kind"] == kind for m in media)
        n_tags = sum(t["value"].count(tag) for t in turns)
        if n_tags == n_items:
            continue
        if kind == "image" and n_items == 1 and n_tags == 0:
            first_human = next(t for t in turns if t["from"] == "human")
            first_human["value"] = f"{tag}\n{first_human['value']}"
            continue
        raise RecordError("placeholder_mismatch", f"{n_items} {kind} item(s) but {n_tags} {tag} placeholder(s)")
    if any(t["from"] == "gpt" and any(tag in t["value"] for tag in PLACEHOLDERS.values()) for t in turns):
        raise RecordError("placeholder_mismatch", "media placeholders are only allowed in human turns")


def infer_modality(media: list[dict[str, Any]]) -> str:
    kinds = [m["kind"] for m in media]
    n_img, n_vid, n_aud = kinds.count("image"), kinds.count("video"), kinds.count("audio")
    if n_aud and (n_img or n_vid):
        return "interleaved"
    if n_vid:
        return "video" if not n_img else "interleaved"
    if n_img:
        return "image" if n_img == 1 else "multi_image"
    return "audio" if n_aud else "text"


class IngestStage(Stage):
    name: ClassVar[str] = "ingest"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=512)
    source_keys: ClassVar[tuple[str, ...]] = ("name", "manifests", "modality", "domain")

    def inputs(self) -> list[str]:
        return ["source", "manifest", "line", "raw"]

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = [self.parse_row(r) for r in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=CORE_SCHEMA)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return CORE_SCHEMA

    def parse_row(self, raw_row: dict[str, Any]) -> dict[str, Any]:
        source, manifest, line = raw_row["source"], raw_row["manifest"], raw_row["line"]
        row: dict[str, Any] = {name: None for name in CORE_SCHEMA.names}
        where = f"{os.path.basename(manifest)}:{line}"  # the file's name, as Path.name gives it
        row.update(source=source, manifest=manifest, line=line, origin="manifest",
                   id=record_id(source, where), orig_id=where)
        src_cfg = self.ctx.source(source)
        row["domain"] = getattr(src_cfg, "domain", None) or "general"
        raw: bytes = raw_row["raw"]
        if len(raw) > self.config.max_line_bytes:
            return reject(row, self.name, "line_too_long", f"{len(raw)} bytes > {self.config.max_line_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return reject(row, self.name, "bad_encoding", f"line is not UTF-8 ({e.reason} at byte {e.start})")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            found = LOOSE_ID_RE.search(text)  # a broken line still shows the user which sample it was
            if found:
                row["orig_id"] = found.group(1)
            return reject(row, self.name, "invalid_json", f"{e.msg} at column {e.colno}")
        if not isinstance(obj, dict):
            return reject(row, self.name, "invalid_record", f"expected a JSON object, got {type(obj).__name__}")
        if obj.get("id") is not None:
            row["id"] = record_id(source, str(obj["id"]))
            row["orig_id"] = str(obj["id"])
        try:
            turns = parse_conversations(obj.get("conversations"))
            media = parse_media(obj)
            check_placeholders(turns, media)
        except RecordError as e:
            return reject(row, self.name, e.reason, str(e))
        declared = getattr(src_cfg, "modality", "auto")
        row.update(conversations=turns, media=media,
                   modality=declared if declared not in (None, "auto") else infer_modality(media),
                   meta=dumps_meta({"orig_id": obj.get("id"),
                                    **{k: v for k, v in obj.items() if k not in KNOWN_KEYS}}))
        return row
