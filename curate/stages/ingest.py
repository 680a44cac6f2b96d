"""Ingest: parse raw manifest rows into records, checking conversations and placeholders.

Reads every shape of curate.manifest_formats: the LLaVA / InternVL / ShareGPT format
  {"id": ..., "image": str | [str], "video": ..., "audio": ...,
   "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}
(`user`/`assistant` are aliases of `human`/`gpt`), OpenAI-style `messages`, LLaMA-Factory's
`images` columns and Hugging Face's {bytes, path} media, whose bytes are written to the media
store here. One image with no `<image>` placeholder gets one prepended to the first human
turn (as LLaVA does); any other mismatch between media items and placeholders is a reject.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curate.errors import UserError
from curate.layout import RunLayout
from curate.manifest_formats import (
    KNOWN_KEYS,
    ROLE_ALIASES,
    MediaRef,
    RecordError,
    parse_conversations,
    read_sample,
)
from curate.records import CORE_SCHEMA, PLACEHOLDERS, dumps_meta, empty_media, record_id, reject
from curate.stages.base import Job, Resources, Stage
from curate.store import MediaStore

__all__ = ["IngestStage", "RecordError", "ROLE_ALIASES", "KNOWN_KEYS", "parse_conversations",
           "check_placeholders", "infer_modality", "LOOSE_ID_RE", "stop_if_nothing_ingested"]

log = logging.getLogger("curate")

LOOSE_ID_RE = re.compile(r'"id"\s*:\s*"([^"\\]{1,200})"')


def check_placeholders(turns: list[dict[str, str]], media: list[MediaRef]) -> None:
    """Placeholders must match media items; one image with none gets one prepended."""
    for kind, tag in PLACEHOLDERS.items():
        n_items = sum(m.kind == kind for m in media)
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
    source_keys: ClassVar[tuple[str, ...]] = ("name", "manifests", "modality", "domain", "expect_rows")

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
            sample = read_sample(obj, raw_row.get("blobs") or ())
            turns = sample.turns
            check_placeholders(turns, sample.media)
            media = [self.media_item(m) for m in sample.media]
        except RecordError as e:
            return reject(row, self.name, e.reason, str(e))
        except OSError as e:
            return reject(row, self.name, "unreadable_file", f"cannot write inline media to the store: {e}")
        declared = getattr(src_cfg, "modality", "auto")
        row.update(conversations=turns, media=media,
                   modality=declared if declared not in (None, "auto") else infer_modality(media),
                   meta=dumps_meta({"orig_id": obj.get("id"),
                                    **{k: v for k, v in obj.items() if k not in KNOWN_KEYS}}))
        return row

    @functools.cached_property
    def store(self) -> MediaStore:
        return MediaStore(self.ctx.media_dir)

    def media_item(self, ref: MediaRef) -> dict[str, Any]:
        """A record's media entry; bytes carried in the row go to the media store (once, by content),
        and the media stage checks them there as it checks a file."""
        item = empty_media(ref.kind, ref.ref)
        if ref.data is not None:
            item["path"] = str(self.store.put_bytes(ref.data, ref.ext)[0])
        return item

    def finish(self, job: Job) -> dict[str, Any]:
        """Rows read per source; a source that declares `expect_rows` (an InternVL meta file's
        `length`) and read another number is named in a warning and in the marker."""
        expected = {name: src.expect_rows for name, src in self.ctx.sources.items()
                    if getattr(src, "expect_rows", None) is not None}
        if not expected:
            return {}
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        rows = pads.dataset(str(job.output_dir), format="parquet").to_table(columns=["source"])
        column = rows.column("source")
        read = {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist()}
        differ = {name: {"expected": n, "read": read.get(name, 0)} for name, n in expected.items()
                  if read.get(name, 0) != n}
        for name, d in differ.items():
            log.warning("source %s: its meta file says length %d, its manifests hold %d rows", name,
                        d["expected"], d["read"])
        return {"rows_differ_from_length": differ} if differ else {}


def stop_if_nothing_ingested(layout: RunLayout, marker: dict[str, Any]) -> None:
    """When ingest keeps no row, the run stops (UserError, exit 2) with the top reject reasons
    and one example of each, instead of running every later stage on nothing."""
    if marker.get("kept", 1) > 0:
        return
    rows = marker.get("rows", 0)
    if not rows:
        raise UserError("the manifests hold no rows: nothing to curate (are they empty?)")
    examples: dict[str, dict[str, Any]] = {}
    path = Path(layout.rejects("ingest"))
    if path.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["manifest", "line", "reject_reason", "reject_detail"])
        for r in table.sort_by([("manifest", "ascending"), ("line", "ascending")]).to_pylist():
            examples.setdefault(r["reject_reason"], r)
    top = sorted(marker.get("rejected", {}).items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    lines = []
    for reason, n in top:
        ex = examples.get(reason)
        where = f"{os.path.basename(ex['manifest'])}:{ex['line']}: {ex['reject_detail'][:160]}" if ex else ""
        where = f" (e.g. {where})" if where else ""
        lines.append(f"{reason} x{n}{where}")
    raise UserError(f"ingest kept none of the {rows} manifest rows, so the run stops here: "
                    + "; ".join(lines) + f". The rejects are in {path}; docs/manifests.md shows the formats "
                    f"a manifest may have.")
