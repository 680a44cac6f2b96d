"""Write packed sequences as WebDataset tar shards, plus the shard index.

One WebDataset sample = one packed sequence, always the same four members:
  <key>.input_ids.npy  int32 token ids of all samples, concatenated
  <key>.json           {"sequence", "n_tokens", "n_tiles", "samples": [...]} (see pack_sequence)
  <key>.labels.npy     int32 labels (IGNORE = -100: no loss)
  <key>.media.mp       msgpack {"audio": [{"path", "bytes"}], "images": [{"path", "bytes"}]}: the media
                       files as stored (images, video frames as JPEG, audio as FLAC), named m000.jpg ...
                       in the order the samples use them; the JSON refers to them by that name
Why one media member and not one member per file: Hugging Face `datasets` reads a tar as a table
whose columns are the member names, so every sequence needs the same names; a list of
{"path", "bytes"} is exactly the storage of its Image and Audio features, so it decodes there as
lists of images and audio. Plain `webdataset` and Megatron-Energon decode .mp with msgpack too.
No pickle members, ever. A shard is written to a temporary name and renamed when complete,
members are sorted and carry a fixed mtime, so the same input gives byte-identical shards.
The member names, the index name and the readers are in packing.format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from packing.format import (
    FORMAT,
    IDS_MEMBER,
    INDEX_NAME,
    JSON_MEMBER,
    LABELS_MEMBER,
    MEDIA_MEMBER,
    MEMBERS,
    SHARD_PATTERN,
    media_files,
)

__all__ = ["FORMAT", "MEDIA_MEMBER", "MEMBERS", "SHARD_PATTERN", "media_files",  # packing.format's
           "media_bytes", "npy_bytes", "pack_sequence", "write_shard", "file_sha256", "write_index",
           "verify_shards"]

FIXED_MTIME = 1_700_000_000.0  # reproducible tars


def media_bytes(images: dict[str, bytes], audio: dict[str, bytes]) -> bytes:
    """The media member: images (with video frames) and audio, each file named m000.jpg ... in use order."""
    import msgpack

    return msgpack.packb({"audio": [{"path": k, "bytes": v} for k, v in audio.items()],
                          "images": [{"path": k, "bytes": v} for k, v in images.items()]}, use_bin_type=True)


def npy_bytes(values: Iterable[int] | np.ndarray) -> bytes:
    values = values if isinstance(values, np.ndarray) else np.asarray(list(values))
    buf = io.BytesIO()
    np.save(buf, values.astype(np.int32, copy=False), allow_pickle=False)
    return buf.getvalue()


def pack_sequence(key: str, sequence_index: int, samples: list[dict[str, Any]],
                  augment_sources: frozenset[str] = frozenset()) -> dict[str, bytes | str]:
    """Build one WebDataset sample from tokenized records (dicts with input_ids, labels, media;
    the token lists may be Python lists or int arrays).

    Samples of `augment_sources` are flagged `"augment": true`: the loader then applies
    InternVL's random JPEG re-compression to their images (never to video frames).
    """
    members: dict[str, bytes | str] = {"__key__": key}
    images: dict[str, bytes] = {}
    audio: dict[str, bytes] = {}
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    n_tokens = 0
    described = []
    tile_offset = 0
    n_media = 0
    for s in samples:
        media_desc = []
        for m in s.get("media") or []:
            entry: dict[str, Any] = {"kind": m["kind"], "sha256": m["sha256"]}
            if m["kind"] == "video":
                entry["frames"] = []
                for frame in m["frames"]:
                    name = f"m{n_media:03d}.jpg"
                    images[name] = Path(frame).read_bytes()
                    entry["frames"].append(name)
                    n_media += 1
                entry.update(tiles=len(m["frames"]), duration=m["duration"])
            else:
                name = f"m{n_media:03d}{Path(m['path']).suffix}"
                (audio if m["kind"] == "audio" else images)[name] = Path(m["path"]).read_bytes()
                n_media += 1
                entry["member"] = name
                if m["kind"] == "image":
                    entry.update(grid=[m["grid_w"], m["grid_h"]], tiles=m["tiles"], size=[m["width"], m["height"]])
                else:
                    entry.update(duration=m["duration"])
            media_desc.append(entry)
        described.append({
            "id": s["id"], "orig_id": s.get("orig_id"), "source": s["source"], "modality": s["modality"],
            "token_offset": n_tokens, "n_tokens": len(s["input_ids"]),
            "tile_offset": tile_offset, "n_tiles": int(s["n_tiles"]),
            "n_response_tokens": int(s.get("n_response_tokens") or 0), "media": media_desc,
            "augment": s["source"] in augment_sources,
        })
        ids.append(np.asarray(s["input_ids"], np.int32))
        labels.append(np.asarray(s["labels"], np.int32))
        n_tokens += len(s["input_ids"])
        tile_offset += int(s["n_tiles"])
    members[JSON_MEMBER] = json.dumps({"sequence": sequence_index, "n_tokens": n_tokens,
                                       "n_tiles": tile_offset, "samples": described},
                                      ensure_ascii=False, sort_keys=True)
    members[IDS_MEMBER] = npy_bytes(np.concatenate(ids) if ids else np.zeros(0, np.int32))
    members[LABELS_MEMBER] = npy_bytes(np.concatenate(labels) if labels else np.zeros(0, np.int32))
    members[MEDIA_MEMBER] = media_bytes(images, audio)
    return members


def write_shard(path: str | Path, sequences: list[dict[str, bytes | str]]) -> dict[str, Any]:
    """Write sequences to `path` atomically; returns the shard's index entry."""
    import webdataset as wds

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=FIXED_MTIME, user="omnicurate", group="omnicurate")
        for seq in sequences:
            writer.write({k: (v.encode() if isinstance(v, str) else v) for k, v in seq.items() if k != "__key__"}
                         | {"__key__": seq["__key__"]})
        writer.close()
    os.replace(tmp, path)
    metas = [json.loads(s[JSON_MEMBER]) for s in sequences]
    return {
        "shard": path.name,
        "sequences": len(sequences),
        "samples": sum(len(m["samples"]) for m in metas),
        "tokens": sum(m["n_tokens"] for m in metas),
        "tiles": sum(m["n_tiles"] for m in metas),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_index(shard_dir: str | Path, entries: list[dict[str, Any]], budgets: dict[str, int]) -> Path:
    entries = sorted(entries, key=lambda e: e["shard"])
    index = {"format": FORMAT, "budgets": budgets, "shards": entries,
             "totals": {k: sum(e[k] for e in entries) for k in ("sequences", "samples", "tokens", "tiles", "bytes")}}
    path = Path(shard_dir) / INDEX_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, path)
    return path


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Check every shard against index.json (presence, size, sha256); returns the problems found."""
    shard_dir = Path(shard_dir)
    index_path = shard_dir / INDEX_NAME
    if not index_path.exists():
        return [f"{index_path}: missing"]
    index = json.loads(index_path.read_text())
    problems = []
    for entry in index["shards"]:
        p = shard_dir / entry["shard"]
        if not p.exists():
            problems.append(f"{p.name}: missing")
        elif p.stat().st_size != entry["bytes"]:
            problems.append(f"{p.name}: {p.stat().st_size} bytes, index says {entry['bytes']}")
        elif file_sha256(p) != entry["sha256"]:
            problems.append(f"{p.name}: sha256 differs from the index")
    info = shard_dir / ".nv-meta" / ".info.json"  # Energon's sample counts must agree with the index
    if info.exists():
        counts = json.loads(info.read_text()).get("shard_counts", {})
        problems += [f"{e['shard']}: Energon's .nv-meta/.info.json says {counts.get(e['shard'])} sequences, "
                     f"index.json {e['sequences']} (rewrite it: python -m packing.energon_meta {shard_dir})"
                     for e in index["shards"] if counts.get(e["shard"]) != e["sequences"]]
    listed = {e["shard"] for e in index["shards"]}
    problems += [f"{p.name}: not in index.json" for p in sorted(shard_dir.glob("*.tar")) if p.name not in listed]
    return problems
