"""Decode and probe media with Pillow and ffmpeg; every failure raises MediaError(reason).

These are pure helpers (bytes/paths in, facts out) so the media stage stays small and the
checks test without Ray.
"""

from __future__ import annotations

import io
import subprocess
import warnings
from dataclasses import dataclass

from PIL import Image

from curate.records import RowError

IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
FFMPEG_TIMEOUT_S = 120


class MediaError(RowError):
    """A media file that cannot be used; `reason` is the reject reason."""


@dataclass
class ImageInfo:
    data: bytes  # JPEG or PNG bytes to store
    ext: str
    width: int
    height: int
    mime: str


def probe_image(data: bytes, max_pixels: int, min_side: int = 1) -> ImageInfo:
    """Validate image bytes fully (header, pixel cap, complete decode); keep JPEG/PNG as they are."""
    if not data:
        raise MediaError("empty_file", "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise MediaError("image_too_large", f"{width}x{height} = {width * height} px > cap {max_pixels}")
            if min(width, height) < min_side:
                raise MediaError("image_too_small", f"{width}x{height}: a side is under {min_side} px")
            fmt = img.format or ""
            img.load()  # a full decode catches truncated files that verify() lets through
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError("image_too_large", str(e)) from None
    except Image.UnidentifiedImageError:
        raise MediaError("broken_image", "cannot decode image: not a format Pillow recognises") from None
    except Exception as e:  # Pillow raises many types for bad bytes
        raise MediaError("broken_image", f"cannot decode image: {e}") from None
    if fmt in ("JPEG", "PNG"):
        return ImageInfo(data, IMAGE_FORMATS[fmt], width, height, f"image/{fmt.lower()}")
    out = io.BytesIO()
    img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").save(out, format="PNG")
    return ImageInfo(out.getvalue(), ".png", width, height, "image/png")


def _run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError("media_timeout", f"{cmd[0]} took more than {FFMPEG_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise MediaError("ffmpeg_failed", err[-1] if err else f"{cmd[0]} exit {proc.returncode}")
    return proc.stdout


def probe_streams(path: str) -> dict:
    """ffprobe a file: duration and stream kinds (ffmpeg-python wraps the JSON call)."""
    import ffmpeg

    try:
        info = ffmpeg.probe(path)
    except ffmpeg.Error as e:
        lines = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise MediaError("broken_media", lines[-1] if lines else "ffprobe failed") from None
    kinds = [s.get("codec_type") for s in info.get("streams", [])]
    duration = float(info.get("format", {}).get("duration") or 0.0)
    return {"duration": duration, "kinds": kinds}


def sample_video_frames(path: str, n_frames: int, duration: float, size: int) -> list[bytes]:
    """n_frames JPEGs spread evenly over the video, each resized to size x size (n_max = 1)."""
    fps = max(n_frames / max(duration, 1e-3), 1e-3)
    out = _run(["ffmpeg", "-v", "error", "-nostdin", "-i", path, "-vf", f"fps={fps:.6f},scale={size}:{size}",
                "-frames:v", str(n_frames), "-q:v", "3", "-f", "image2pipe", "-vcodec", "mjpeg", "pipe:1"])
    frames = split_jpeg_stream(out)
    if not frames:
        raise MediaError("broken_video", "no frame could be decoded")
    return frames


def split_jpeg_stream(data: bytes) -> list[bytes]:
    """Split ffmpeg's concatenated MJPEG output into single JPEG files."""
    frames, start = [], 0
    while True:
        end = data.find(b"\xff\xd9\xff\xd8", start)
        if end < 0:
            if data[start:start + 2] == b"\xff\xd8":
                frames.append(data[start:])
            return frames
        frames.append(data[start:end + 2])
        start = end + 2


def decode_audio(path: str, sample_rate: int) -> tuple[bytes, float]:
    """Decode any audio (or a video's audio track) to 16-bit mono PCM; returns (pcm, seconds)."""
    pcm = _run(["ffmpeg", "-v", "error", "-nostdin", "-i", path, "-vn", "-ac", "1", "-ar", str(sample_rate),
                "-f", "s16le", "pipe:1"])
    if not pcm:
        raise MediaError("broken_audio", "no audio samples decoded")
    return pcm, len(pcm) / 2 / sample_rate


def pcm_to_flac(pcm: bytes, sample_rate: int) -> bytes:
    return _run(["ffmpeg", "-v", "error", "-nostdin", "-f", "s16le", "-ac", "1", "-ar", str(sample_rate),
                 "-i", "pipe:0", "-f", "flac", "pipe:1"], stdin=pcm)
