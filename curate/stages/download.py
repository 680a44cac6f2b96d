"""Download: fetch media referenced by URL into the content-addressed store.

For each batch, the distinct network URLs (http, https, s3, gs) of media items that have
no stored path yet are fetched by a thread pool sharing one connection pool (curate.fetch:
timeouts, byte cap, redirects checked, host lists, no private addresses unless
`allow_private` / `allow_networks`, retries with backoff for retryable errors only, content
sniffed from the bytes). Fetched bytes go to the media store
(sha256 names), optionally re-encoded when larger than `resize_max_side`. The media item
gets its store `path`, `sha256`, `bytes` and `mime`; the media stage then validates it.
A sample with a media URL that fails for good is rejected with the fetch's reason.

Resume: every outcome is appended to a URL index under <media>/urls/ (JSON lines, one
file per worker and batch). A re-run reuses stored URLs without a request and does not
retry URLs that failed for good (`--retry-failed` does); retryable failures are retried.
Every fetch outcome is also logged to <out>/download/ (Parquet) for the stats report.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.fetch import Fetcher, FetchResult, resize_image
from curate.layout import write_jsonl_atomic, write_parquet_atomic
from curate.records import reject
from curate.security import is_network_url
from curate.stages.base import Resources, Stage
from curate.store import MediaStore

LOG_SCHEMA = pa.schema([("url", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                        ("error", pa.string()), ("code", pa.int32()), ("bytes", pa.int64()),
                        ("mime", pa.string()), ("elapsed", pa.float64()), ("attempts", pa.int32()),
                        ("finished", pa.float64())])


class UrlIndex:
    """url -> last outcome, from the JSON-lines files of earlier batches and runs."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.folder.exists():
            for path in sorted(self.folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
                for line in path.read_text().splitlines():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a worker died mid-line: ignore that line
                        continue
                    self.entries[entry["url"]] = entry

    def append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        write_jsonl_atomic(self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl", entries)
        for e in entries:
            self.entries[e["url"]] = e


class DownloadStage(Stage):
    name: ClassVar[str] = "download"
    # one task at a time: its `concurrency` threads share one connection pool, set up once per
    # worker process (set resources.actors for more tasks at once). Tasks, not an actor, so the
    # read of the previous stage's files, this stage and the write fuse into one task per file
    # (rows without a URL pass through as Arrow).
    resources: ClassVar[Resources] = Resources(cpus=1, actors=1, batch_size=256)
    setup_in_tasks: ClassVar[bool] = True

    def inputs(self) -> list[str]:
        return ["media"]

    def setup(self) -> None:
        c = self.config
        self.fetcher = Fetcher(connect_timeout=c.connect_timeout_s, read_timeout=c.read_timeout_s,
                               total_timeout=c.total_timeout_s, retries=c.retries, backoff=c.backoff_s,
                               max_bytes=c.max_bytes, max_redirects=c.max_redirects, allow_hosts=c.allow_hosts,
                               deny_hosts=c.deny_hosts, per_host=c.per_host, pool_size=c.concurrency,
                               user_agent=c.user_agent, fsspec_options=c.options,
                               allow_private=c.allow_private, allow_networks=c.allow_networks)
        layout = self.ctx.layout
        self.store = MediaStore(layout.media)
        self.index = UrlIndex(layout.url_index)
        self.log_dir = layout.download_logs
        self.pool = ThreadPoolExecutor(max_workers=c.concurrency, thread_name_prefix="fetch")

    def input_skip_reason(self, input_dir: Path) -> str | None:
        """Skip when no alive input row has a media reference to fetch: the stage's single
        task would only copy the rows (1.05M text rows: about 65 s alone, against a third of
        that on two cores). Reads only the media column, and stops at the first batch with work."""
        import pyarrow.dataset as pads

        rows = pads.dataset(str(input_dir), format="parquet")
        for batch in rows.to_batches(columns=["media", "reject_reason"], filter=pc.field("reject_reason").is_null()):
            if len(batch) and pc.any(self.rows_to_process(pa.Table.from_batches([batch]))).as_py():
                return None
        return "no media item refers to a URL: nothing to fetch"

    # ------------------------------------------------------------------ per batch
    def rows_to_process(self, batch: pa.Table) -> pa.Array:
        """Alive rows with a media item not yet stored whose reference has a scheme (a superset
        of the network URLs process_rows fetches); the others pass through untouched."""
        media = batch.column("media").combine_chunks()
        items = pc.list_flatten(media)
        if not len(items):
            return pa.array(np.zeros(len(batch), bool))
        remote = pc.and_(pc.is_null(pc.struct_field(items, "path")),
                         pc.match_substring(pc.struct_field(items, "ref"), "://"))
        parents = pc.list_parent_indices(media).to_numpy(zero_copy_only=False)
        hits = np.bincount(parents[pc.fill_null(remote, False).to_numpy(zero_copy_only=False)], minlength=len(batch))
        return pc.and_(pa.array(hits > 0), pc.is_null(batch.column("reject_reason")))

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        urls = sorted({m["ref"] for r in rows if r.get("reject_reason") is None for m in r.get("media") or []
                       if not m.get("path") and m.get("ref") and is_network_url(m["ref"])})
        if not urls:
            return rows
        outcomes: dict[str, dict[str, Any]] = {}
        to_fetch = []
        for url in urls:
            known = self.index.entries.get(url)
            if known and known["status"] == "ok" and Path(known["path"]).exists():
                outcomes[url] = known | {"cached": True}
            elif known and known["status"] == "failed" and not known.get("retryable") and not self.config.retry_failed:
                outcomes[url] = known | {"cached": True}
            else:
                to_fetch.append(url)
        fresh = list(self.pool.map(self.fetcher.fetch, to_fetch))
        new_entries = [self.store_result(r) for r in fresh]
        self.index.append(new_entries)
        self.write_log(fresh, new_entries)
        outcomes.update({e["url"]: e for e in new_entries})
        for row in rows:
            if row.get("reject_reason") is not None:
                continue
            for item in row.get("media") or []:
                out = outcomes.get(item.get("ref"))
                if out is None or item.get("path"):
                    continue
                if out["status"] != "ok":
                    reject(row, self.name, out["reason"], f"{item['ref']}: {out['error']}")
                    break
                if out["kind"] != item["kind"]:
                    reject(row, self.name, "wrong_media_kind",
                           f"{item['ref']}: the manifest says {item['kind']}, the bytes are {out['mime']}")
                    break
                item.update(path=out["path"], sha256=out["sha256"], bytes=out["bytes"], mime=out["mime"])
        return rows

    def store_result(self, r: FetchResult) -> dict[str, Any]:
        """Put fetched bytes in the store (resized if asked); the index entry for the URL."""
        # a refused address is decided again under the next run's recipe (no request was made)
        again = r.retryable or r.reason == "private_address"
        entry: dict[str, Any] = {"url": r.url, "status": "ok" if r.ok else "failed", "reason": r.reason,
                                 "error": r.error, "retryable": again, "kind": r.kind, "mime": r.mime,
                                 "time": time.time()}
        if not r.ok:
            return entry
        data, mime, ext = r.data, r.mime, r.ext
        if self.config.resize_max_side and r.kind == "image":
            try:
                resized = resize_image(data, self.config.resize_max_side, self.config.jpeg_quality)
            except Exception as e:  # undecodable image: keep the bytes, the media stage will reject them
                resized = None
                entry["error"] = f"not resized: {type(e).__name__}: {e}"
            if resized:
                data, mime, ext = resized
        path, sha = self.store.put_bytes(data, ext or "")
        entry.update(path=str(path), sha256=sha, bytes=len(data), mime=mime)
        return entry

    def write_log(self, results: list[FetchResult], entries: list[dict[str, Any]]) -> None:
        if not results:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        table = pa.table({
            "url": [r.url for r in results],
            "status": [e["status"] for e in entries],
            "reason": [r.reason or None for r in results],
            "error": [r.error or None for r in results],
            "code": [r.code for r in results],
            "bytes": [e.get("bytes") or 0 for e in entries],
            "mime": [r.mime for r in results],
            "elapsed": [r.elapsed for r in results],
            "attempts": [r.attempts for r in results],
            "finished": [now] * len(results),
        }, schema=LOG_SCHEMA)
        write_parquet_atomic(self.log_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet", table)
