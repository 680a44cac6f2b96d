"""The shapes a sample comes in, read into one: turns (from, value) and media references.

A manifest row may be written as any of the formats multimodal training code reads
(docs/manifests.md shows one example of each):

- LLaVA / InternVL / ShareGPT: `conversations: [{from, value}]` with `image` / `video` /
  `audio` (a path or a list) and `<image>`-style placeholders in the turns;
- OpenAI / Hugging Face chat: `messages: [{role, content}]`, where `content` is a string or a
  list of parts (`{"type": "text", "text"}`, `{"type": "image", "image"}`,
  `{"type": "image_url", "image_url": {"url"}}`, and the same for audio and video); a media part
  becomes its placeholder in the turn's text, the parts joined by newlines;
- LLaMA-Factory: `images` / `videos` / `audios` list columns with `<image>` placeholders, and
  a `system` column;
- Hugging Face Parquet: media as `{bytes, path}` structs (or lists of them), audio also as
  `{array, sampling_rate}`; their bytes go to the media store, not into any row.

A `system` column (or a first `system` / `role: system` turn) is the sample's system prompt:
a turn with `from: system`, which tokenize renders as the chat template's system message.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import wave
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Sequence

from curate.records import MEDIA_KINDS, PLACEHOLDERS, RowError

ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system",
                "chatgpt": "gpt"}
#: top-level keys a format defines; the others are kept in the row's meta
KNOWN_KEYS = {"id", "conversations", "messages", "system", *MEDIA_KINDS, *(f"{k}s" for k in MEDIA_KINDS)}
#: a binary value of a Parquet row travels beside its JSON as {"$blob": index} (curate.manifest)
BLOB_KEY = "$blob"

#: content part types of a chat message, by media kind: the part's own key, or the nested
#: {"url"} object of the `*_url` types, holds the reference
PART_KINDS = {"image": "image", "image_url": "image", "input_image": "image",
              "video": "video", "video_url": "video",
              "audio": "audio", "audio_url": "audio", "input_audio": "audio"}
MAGIC_EXT = [(b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"RIFF", ".wav"),
             (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\x1aE\xdf\xa3", ".webm")]


class RecordError(RowError):
    """A manifest row that is not a usable sample; `reason` is the reject reason."""


@dataclass
class MediaRef:
    """One media item as the manifest gives it: a path or URL, or bytes carried in the row."""

    kind: str
    ref: str  # the path or URL as written; for bytes, a description ("image 1 (inline bytes, 2048 B)")
    data: bytes | None = None  # inline bytes (a Parquet struct or a data: URL), for the media store
    ext: str = ""


@dataclass
class Sample:
    turns: list[dict[str, str]]
    media: list[MediaRef]


def read_sample(obj: dict[str, Any], blobs: Sequence[bytes] = ()) -> Sample:
    """The turns and media of one manifest object, in any of the shapes above."""
    if obj.get("messages") is not None and obj.get("conversations") is not None:
        raise RecordError("malformed_conversations", "both 'conversations' and 'messages': give one")
    placeholders: dict[str, list[MediaRef | None]] = {k: [] for k in MEDIA_KINDS}
    if obj.get("messages") is not None:
        turns = parse_messages(obj["messages"], placeholders, blobs)
    else:
        turns = parse_conversations(obj.get("conversations"))
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise RecordError("malformed_conversations", "'system' must be a string")
        if system and not any(t["from"] == "system" for t in turns):
            turns.insert(0, {"from": "system", "value": system})
    media: list[MediaRef] = []
    for kind in MEDIA_KINDS:
        column = parse_media_column(obj, kind, blobs)
        inline = [m for m in placeholders[kind] if m is not None]
        if inline and (column or len(inline) < len(placeholders[kind])):
            raise RecordError("malformed_media", f"the {kind} parts of 'messages' name some {kind}s "
                                                 f"themselves and leave others to the '{kind}s' column; "
                                                 f"use one or the other")
        media.extend(inline or column)
    return Sample(turns, media)


def parse_conversations(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise RecordError("missing_conversations", "no 'conversations' field")
    if not isinstance(value, list) or not value:
        raise RecordError("malformed_conversations", "'conversations' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if isinstance(turn, dict) and "from" not in turn and "role" in turn and "content" in turn:
            turn = {"from": turn["role"], "value": turn["content"]}  # {role, content} turns in a LLaVA file
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError("malformed_conversations", f"turn {i} needs 'from' and 'value', got {str(turn)[:80]!r}")
        role = ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError("malformed_conversations", f"turn {i}: unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise RecordError("malformed_conversations", f"turn {i}: 'value' must be a string")
        turns.append({"from": role, "value": turn["value"]})
    _check_speakers(turns)
    return turns


def _check_speakers(turns: list[dict[str, str]]) -> None:
    if not any(t["from"] == "gpt" for t in turns) or not any(t["from"] == "human" for t in turns):
        raise RecordError("malformed_conversations", "a sample needs at least one human and one gpt turn")


def parse_messages(value: Any, placeholders: dict[str, list[MediaRef | None]],
                   blobs: Sequence[bytes]) -> list[dict[str, str]]:
    """OpenAI-style messages; media parts are added to `placeholders` (None: the item is in a column)."""
    if not isinstance(value, list) or not value:
        raise RecordError("malformed_conversations", "'messages' must be a non-empty list of messages")
    turns = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg:
            raise RecordError("malformed_conversations", f"message {i} needs 'role' and 'content', "
                                                         f"got {str(msg)[:80]!r}")
        role = ROLE_ALIASES.get(str(msg["role"]).lower())
        if role is None:
            raise RecordError("malformed_conversations", f"message {i}: unknown role {msg['role']!r}")
        content = msg.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(_part_text(i, j, part, placeholders, blobs) for j, part in enumerate(content))
        else:
            raise RecordError("malformed_conversations", f"message {i}: 'content' must be a string or a list "
                                                         f"of parts")
        turns.append({"from": role, "value": text})
    _check_speakers(turns)
    return turns


def _part_text(i: int, j: int, part: Any, placeholders: dict[str, list[MediaRef | None]],
               blobs: Sequence[bytes]) -> str:
    where = f"message {i} part {j}"
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise RecordError("malformed_conversations", f"{where}: a part is an object with a 'type'")
    kind_of = part["type"]
    if kind_of == "text":
        if not isinstance(part.get("text"), str):
            raise RecordError("malformed_conversations", f"{where}: a text part needs a string 'text'")
        return part["text"]
    kind = PART_KINDS.get(kind_of)
    if kind is None:
        raise RecordError("malformed_conversations", f"{where}: unknown part type {kind_of!r}")
    value = part.get(kind_of)
    if kind_of == "input_audio" and isinstance(value, dict) and "data" in value:  # OpenAI: base64 + format
        fmt = str(value.get("format") or "wav")
        value = f"data:audio/{fmt};base64,{value['data']}"
    elif isinstance(value, dict) and "url" in value:
        value = value["url"]
    n = len(placeholders[kind]) + 1
    placeholders[kind].append(None if value is None else media_ref(kind, value, n, blobs))
    return PLACEHOLDERS[kind]


def parse_media_column(obj: dict[str, Any], kind: str, blobs: Sequence[bytes]) -> list[MediaRef]:
    """`image` (a path, a struct or a list) or LLaMA-Factory's `images` (a list), not both."""
    single, plural = obj.get(kind), obj.get(f"{kind}s")
    if single is not None and plural is not None:
        raise RecordError("malformed_media", f"both '{kind}' and '{kind}s': give one")
    key, value = (kind, single) if single is not None else (f"{kind}s", plural)
    if value is None:
        return []
    refs = value if isinstance(value, list) else [value]
    paths_or_structs = all(isinstance(r, str) and r for r in refs) or all(_is_struct(r) for r in refs)
    if key == kind and not paths_or_structs:
        raise RecordError("malformed_media", f"'{kind}' must be a path/URL or a list of them")
    return [media_ref(kind, r, n, blobs, key) for n, r in enumerate(refs, start=1)]


def _is_struct(value: Any) -> bool:
    return isinstance(value, dict) and bool({"bytes", "path", "array"} & value.keys())


def media_ref(kind: str, value: Any, n: int, blobs: Sequence[bytes], key: str | None = None) -> MediaRef:
    """One media value: a path or URL, a data: URL, a {bytes, path} struct or {array, sampling_rate}."""
    where = f"{key or kind} {n}"
    if isinstance(value, str):
        if not value:
            raise RecordError("malformed_media", f"{where}: an empty reference")
        if value.startswith("data:"):
            return _data_url(kind, value, where)
        return MediaRef(kind, value)
    if not _is_struct(value):
        raise RecordError("malformed_media", f"{where}: expected a path, a URL or a {{bytes, path}} object, "
                                             f"got {str(value)[:80]!r}")
    path = value.get("path") if isinstance(value.get("path"), str) and value.get("path") else None
    data = value.get("bytes")
    if isinstance(data, dict) and BLOB_KEY in data:
        data = blobs[int(data[BLOB_KEY])]
    elif isinstance(data, str):  # a JSON file cannot hold bytes; base64 is how they are written
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RecordError("malformed_media", f"{where}: 'bytes' is a string but not base64") from None
    if data is None and value.get("array") is not None:
        data = wav_bytes(value["array"], value.get("sampling_rate"), where)
    if data is None:
        if path is None:
            raise RecordError("malformed_media", f"{where}: neither bytes nor a path")
        return MediaRef(kind, path)
    if not isinstance(data, bytes):
        raise RecordError("malformed_media", f"{where}: 'bytes' must be binary")
    ext = PurePosixPath(path).suffix.lower() if path else ""
    return MediaRef(kind, path or f"{where} (inline bytes, {len(data)} B)", data, ext or sniff_ext(data))


def _data_url(kind: str, url: str, where: str) -> MediaRef:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise RecordError("malformed_media", f"{where}: a data: URL must be base64 "
                                             f"('data:<type>;base64,...')")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("malformed_media", f"{where}: the data: URL is not valid base64") from None
    mime = head[5:].removesuffix(";base64")
    sub = mime.partition("/")[2].split("+")[0]
    ext = {"jpeg": ".jpg", "mpeg": ".mp3", "x-wav": ".wav"}.get(sub, f".{sub}" if sub.isalnum() else "")
    return MediaRef(kind, f"data:{mime};base64 ({len(data)} B)", data, ext or sniff_ext(data))


def sniff_ext(data: bytes) -> str:
    return next((ext for magic, ext in MAGIC_EXT if data.startswith(magic)), ".bin")


def wav_bytes(samples: Any, rate: Any, where: str = "audio") -> bytes:
    """Decoded audio (floats in [-1, 1], or int16 values) as a 16-bit mono WAV file."""
    import numpy as np

    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 1 <= rate <= 1_000_000:
        raise RecordError("malformed_media", f"{where}: an 'array' needs a 'sampling_rate' in Hz")
    try:
        arr = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordError("malformed_media", f"{where}: 'array' must be a list of numbers") from None
    if arr.ndim == 2:  # (channels, samples) or (samples, channels): mixed down
        arr = arr.mean(axis=0 if arr.shape[0] < arr.shape[1] else 1)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise RecordError("malformed_media", f"{where}: 'array' must be one channel of finite numbers")
    if len(arr) and np.abs(arr).max() > 1.0:  # integer samples
        pcm = np.clip(arr, -32768, 32767).astype("<i2")
    else:
        pcm = np.clip(np.round(arr * 32767), -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(math.floor(rate)))
        w.writeframes(pcm.tobytes())
    return out.getvalue()


# ---------------------------------------------------------------------------- InternVL meta files
#: an InternVL fine-tuning meta file's keys, as source settings (curate.recipe.SourceConfig)
META_KEYS = {"annotation": "manifests", "root": "media_root", "repeat_time": "repeat",
             "max_dynamic_patch": "n_max", "data_augment": "augment", "length": "expect_rows"}


def sources_from_meta(path: str) -> list[dict[str, Any]]:
    """The sources of an InternVL meta file, `{name: {root, annotation, repeat_time, ...}}`.

    Paths stay as written: relative ones resolve against the working directory, as
    InternVL's training script resolves them. Keys that curation does not use
    (min_dynamic_patch, split_anno_data, ...) are named in a warning.
    """
    import json
    import logging
    import re

    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as e:
        raise ValueError(f"meta file {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise ValueError(f"meta file {path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not meta or not all(isinstance(v, dict) for v in meta.values()):
        raise ValueError(f"meta file {path}: expected an object of datasets, {{name: {{annotation, root, "
                         f"repeat_time, ...}}}}")
    sources, ignored = [], set()
    for name, entry in meta.items():
        if not entry.get("annotation"):
            raise ValueError(f"meta file {path}: dataset {name!r} has no 'annotation' (its manifest)")
        src: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", str(name)) or "meta"}
        for key, value in entry.items():
            if key in META_KEYS and value not in (None, ""):
                src[META_KEYS[key]] = [value] if key == "annotation" else value
            elif key not in META_KEYS:
                ignored.add(key)
        sources.append(src)
    if ignored:
        logging.getLogger("curate").warning("meta file %s: keys not used by curation: %s", path,
                                            ", ".join(sorted(ignored)))
    return sources
