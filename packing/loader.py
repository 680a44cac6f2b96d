"""Read packed shards back as tensors: attention never crosses samples.

Each packed sequence becomes a dict with
  input_ids, labels      (L,) int64
  position_ids           (L,) restarting at 0 for every sample
  cu_seqlens             (n_samples + 1,) int32 boundaries for varlen attention
  pixel_values           (n_tiles, 3, S, S) float32 in [0, 1] (images cut into their InternVL
                         grid + thumbnail, video frames one tile each), when decode_media
  audio                  list of 16 kHz mono float32 arrays, when decode_media
  samples                the JSON description of the packed samples
With `augment_seed` set, images of samples flagged "augment" are re-compressed as JPEG at a
random quality in [75, 100] (InternVL 2.5), a fresh draw per call; video frames never are.
Reading uses the plain `webdataset` package, so any WebDataset pipeline can do the same.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def sample_boundaries(samples: list[dict[str, Any]], total: int) -> tuple[np.ndarray, np.ndarray]:
    """cu_seqlens and position ids for a packed sequence from its sample descriptions."""
    cu = np.zeros(len(samples) + 1, dtype=np.int32)
    pos = np.zeros(total, dtype=np.int64)
    for i, s in enumerate(samples):
        start, n = s["token_offset"], s["n_tokens"]
        cu[i + 1] = start + n
        pos[start:start + n] = np.arange(n)
    if cu[-1] != total:
        raise ValueError(f"samples cover {cu[-1]} tokens but the sequence has {total}")
    return cu, pos


def loss_weights(samples: list[dict[str, Any]], labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """InternVL 2.5 square averaging: weight 1 / x**power per trained token, x = the sample's response tokens."""
    w = np.zeros(len(labels), dtype=np.float32)
    for s in samples:
        sl = slice(s["token_offset"], s["token_offset"] + s["n_tokens"])
        trained = labels[sl] != -100
        x = max(int(trained.sum()), 1)
        w[sl][trained] = 1.0 / x**power
    return w


def jpeg_recompress(img, rng: np.random.Generator, low: int = 75, high: int = 100):
    """InternVL 2.5's augmentation: re-encode as JPEG at a random quality in [low, high]."""
    from PIL import Image

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(low, high + 1)))
    buf.seek(0)
    return Image.open(buf)


def decode_media(raw: dict[str, bytes], samples: list[dict[str, Any]], tile_size: int = 448,
                 rng: np.random.Generator | None = None):
    from PIL import Image

    from packing.tiles import split_into_tiles

    tiles, audio = [], []
    for s in samples:
        for m in s["media"]:
            if m["kind"] == "image":
                img = Image.open(io.BytesIO(raw[m["member"]]))
                if rng is not None and s.get("augment"):
                    img = jpeg_recompress(img, rng)
                tiles += split_into_tiles(img, m["grid"][0], m["grid"][1], tile_size)
            elif m["kind"] == "video":
                tiles += [Image.open(io.BytesIO(raw[f])).convert("RGB").resize((tile_size, tile_size))
                          for f in m["frames"]]
            elif m["kind"] == "audio":
                audio.append(decode_flac(raw[m["member"]]))
    arr = np.stack([np.asarray(t, dtype=np.float32) / 255.0 for t in tiles]) if tiles else \
        np.zeros((0, tile_size, tile_size, 3), dtype=np.float32)
    return arr.transpose(0, 3, 1, 2), audio


def decode_flac(data: bytes, sample_rate: int = 16000) -> np.ndarray:
    import subprocess

    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", str(sample_rate),
                          "-f", "s16le", "pipe:1"], input=data, capture_output=True, check=True).stdout
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def to_tensors(raw: dict[str, Any], decode: bool = True, tile_size: int = 448,
               rng: np.random.Generator | None = None) -> dict[str, Any]:
    import torch

    meta = json.loads(raw["json"]) if isinstance(raw["json"], (bytes, str)) else raw["json"]
    ids = np.load(io.BytesIO(raw["input_ids.npy"]), allow_pickle=False)
    labels = np.load(io.BytesIO(raw["labels.npy"]), allow_pickle=False)
    cu, pos = sample_boundaries(meta["samples"], len(ids))
    out = {
        "key": raw["__key__"],
        "input_ids": torch.from_numpy(ids.astype(np.int64)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "position_ids": torch.from_numpy(pos),
        "cu_seqlens": torch.from_numpy(cu),
        "loss_weight": torch.from_numpy(loss_weights(meta["samples"], labels)),
        "samples": meta["samples"],
    }
    if decode:
        pixels, audio = decode_media(raw, meta["samples"], tile_size, rng)
        out["pixel_values"] = torch.from_numpy(np.ascontiguousarray(pixels))
        out["audio"] = audio
    return out


def iter_packed(shards: str | Path | list[str], decode: bool = True, tile_size: int = 448,
                augment_seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield packed sequences as tensors from shard paths, a shard folder, or a brace pattern."""
    import webdataset as wds

    if isinstance(shards, (str, Path)) and Path(shards).is_dir():
        shards = sorted(str(p) for p in Path(shards).glob("*.tar"))
    dataset = wds.WebDataset(shards if isinstance(shards, list) else str(shards), shardshuffle=False, empty_check=False)
    rng = np.random.default_rng(augment_seed) if augment_seed is not None else None
    for raw in dataset:
        yield to_tensors(raw, decode=decode, tile_size=tile_size, rng=rng)
