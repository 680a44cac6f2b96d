"""Media: resolve every reference, validate the bytes, store them by content, probe them.

Images: full decode, pixel cap, InternVL tile grid (per-source n_max, shared among the
images of a multi-image sample); a file several rows share is decoded once per worker.
Videos: ffprobe, then `video_frames` frames sampled evenly and resized to tile_size x
tile_size (one tile each). Audio: decoded to 16 kHz mono FLAC with its duration. URLs
must already have been fetched by the download stage.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from curate import mediaio
from curate.mediaio import MediaError
from curate.records import reject
from curate.security import UnsafeReference, is_network_url, resolve_local
from curate.stages.base import Resources, Stage
from curate.store import MediaStore
from packing.tiles import choose_grid, per_image_n_max

#: images whose checked facts a worker keeps (a few hundred bytes each)
IMAGE_CACHE = 65536


class MediaStage(Stage):
    name: ClassVar[str] = "media"
    # tasks fan out per block; a batch is only a call
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=128)
    source_keys: ClassVar[tuple[str, ...]] = ("n_max", "media_root")

    def inputs(self) -> list[str]:
        return ["media", "manifest", "source"]

    @functools.cached_property
    def _images(self) -> dict[tuple[str, int, int], dict[str, Any]]:
        """Facts of images already checked and stored by this worker (MediaStage.stored_image)."""
        return {}

    @functools.cached_property
    def store(self) -> MediaStore:
        """A plain folder handle (no setup() needed, so the stage runs as stateless tasks)."""
        return MediaStore(self.ctx.media_dir)

    def rows_to_process(self, batch: pa.Table) -> pa.Array:
        """Rows with media (text rows pass through untouched)."""
        return pc.greater(pc.list_value_length(batch.column("media")), 0)

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            media = row.get("media") or []
            n_images = sum(m["kind"] == "image" for m in media)
            src = self.ctx.source(row["source"])
            n_max = per_image_n_max(getattr(src, "n_max", 12), n_images)
            for i, item in enumerate(media):
                try:
                    self.prepare(item, getattr(src, "media_root", None) or os.path.dirname(row["manifest"]), n_max)
                except (MediaError, UnsafeReference) as e:
                    reject(row, self.name, e.reason, f"{item['kind']} {i + 1} ({item['ref']}): {e}")
                    break
                except OSError as e:
                    reject(row, self.name, "unreadable_file", f"{item['kind']} {i + 1} ({item['ref']}): {e}")
                    break
        return rows

    # ------------------------------------------------------------------ one media item
    def prepare(self, item: dict[str, Any], manifest_dir: str, n_max: int) -> None:
        path = self.locate(item, manifest_dir)
        size = os.path.getsize(path)
        if size == 0:
            raise MediaError("empty_file", "file is empty")
        if size > self.config.max_bytes:
            raise MediaError("file_too_large", f"{size} bytes > stages.media.max_bytes={self.config.max_bytes}")
        getattr(self, f"prepare_{item['kind']}")(item, path, n_max)

    def locate(self, item: dict[str, Any], manifest_dir: str) -> str:
        """A readable local path: the download stage's stored copy, or a checked local reference."""
        if item.get("path"):
            if not self.store.contains(item["path"]):
                raise UnsafeReference("path_outside_roots", f"stored path {item['path']} is outside the media store")
            return item["path"]
        if is_network_url(item["ref"]):
            raise MediaError("url_not_fetched", "network URL was not downloaded; enable stages.download")
        path = resolve_local(item["ref"], manifest_dir, self.config.allowed_roots)
        if not path.is_file():
            raise MediaError("missing_file", f"no such file: {path}")
        return str(path)

    def prepare_image(self, item: dict[str, Any], path: str, n_max: int) -> None:
        cfg = self.config
        stored = self.stored_image(path)
        cols, rows = choose_grid(stored["width"], stored["height"], n_max, min(cfg.n_min, n_max), cfg.tile_size)
        tiles = cols * rows + (1 if cols * rows > 1 else 0)
        item.update(stored, grid_w=cols, grid_h=rows, tiles=tiles)

    def stored_image(self, path: str) -> dict[str, Any]:
        """Decode-check an image file and store it; the facts are kept per worker for the same
        file (path, size and mtime), as several samples often ask about one image (VQA sets)."""
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        known = self._images.get(key)
        if known is None:
            cfg = self.config
            info = mediaio.probe_image(Path(path).read_bytes(), cfg.max_pixels, cfg.min_side)
            stored, sha = self.store.put_bytes(info.data, info.ext)
            if len(self._images) >= IMAGE_CACHE:
                self._images.clear()
            known = self._images[key] = {"path": str(stored), "sha256": sha, "bytes": len(info.data),
                                         "mime": info.mime, "width": info.width, "height": info.height}
        return known

    def prepare_video(self, item: dict[str, Any], path: str, n_max: int) -> None:
        cfg = self.config
        try:
            probe = mediaio.probe_streams(path)
        except MediaError as e:
            raise MediaError("broken_video", str(e)) from None
        if "video" not in probe["kinds"]:
            raise MediaError("broken_video", "no video stream")
        if probe["duration"] > cfg.max_video_seconds:
            raise MediaError("video_too_long", f"{probe['duration']:.1f}s > {cfg.max_video_seconds}s")
        frames = mediaio.sample_video_frames(path, cfg.video_frames, probe["duration"], cfg.tile_size)
        frame_paths = [str(self.store.put_bytes(f, ".jpg")[0]) for f in frames]
        stored, sha = self.store.put_file(self._copy_to_tmp(path), Path(path).suffix.lower() or ".mp4")
        item.update(path=str(stored), sha256=sha, bytes=os.path.getsize(stored), mime="video",
                    frames=frame_paths, tiles=len(frame_paths), duration=probe["duration"],
                    width=cfg.tile_size, height=cfg.tile_size, grid_w=1, grid_h=1)

    def prepare_audio(self, item: dict[str, Any], path: str, n_max: int) -> None:
        cfg = self.config
        try:
            pcm, seconds = mediaio.decode_audio(path, cfg.audio_sample_rate)
        except MediaError as e:
            raise MediaError("broken_audio", str(e)) from None
        if seconds > cfg.max_audio_seconds:
            raise MediaError("audio_too_long",
                             f"{seconds:.1f}s > stages.media.max_audio_seconds={cfg.max_audio_seconds}")
        flac = mediaio.pcm_to_flac(pcm, cfg.audio_sample_rate)
        stored, sha = self.store.put_bytes(flac, ".flac")
        item.update(path=str(stored), sha256=sha, bytes=len(flac), mime="audio/flac", duration=seconds, tiles=0)

    def _copy_to_tmp(self, path: str) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.store.tmp_dir())
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        return tmp
