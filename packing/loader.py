"""Read packed shards back as tensors: attention never crosses samples.

Each packed sequence becomes a dict with
  input_ids, labels      (L,) int64
  position_ids           (L,) restarting at 0 for every sample
  cu_seqlens             (n_samples + 1,) int32 boundaries for varlen attention
  loss_weight            (L,) float32 InternVL 2.5 square averaging over each sample's trained
                         tokens (packing.format.loss_weights): the weights `curate train` uses
  pixel_values           (n_tiles, 3, S, S) float32 in [0, 1] (images cut into their InternVL
                         grid + thumbnail, video frames one tile each), when decode_media
  audio                  list of 16 kHz mono float32 arrays, when decode_media
  samples                the JSON description of the packed samples
With `augment_seed` set, images of samples flagged "augment" are re-compressed as JPEG at a
random quality in [75, 100] (InternVL 2.5), a fresh draw per call; video frames never are.
Reading uses the plain `webdataset` package, so any WebDataset pipeline can do the same.
PackedDataset wraps this for a PyTorch DataLoader: rank and worker sharding, a seeded shuffle buffer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch.utils.data

from packing.format import (
    IDS_MEMBER,
    JSON_MEMBER,
    LABELS_MEMBER,
    MEDIA_MEMBER,
    consumer_range,
    count_sequences,
    loss_weights,
    media_files,
    shard_paths,
)

__all__ = ["sample_boundaries", "loss_weights", "jpeg_recompress", "decode_media", "decode_flac", "as_array",
           "to_tensors", "iter_packed", "shard_paths", "count_sequences", "PackedDataset", "shuffled"]


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


def jpeg_recompress(img, rng: np.random.Generator, low: int = 75, high: int = 100):
    """InternVL 2.5's augmentation: re-encode as JPEG at a random quality in [low, high]."""
    from PIL import Image

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(low, high + 1)))
    buf.seek(0)
    return Image.open(buf)


def decode_media(raw: dict[str, Any], samples: list[dict[str, Any]], tile_size: int = 448,
                 rng: np.random.Generator | None = None):
    """Tiles (n, 3, S, S) and audio arrays from a sequence's media member (v1 shards: its m000.* members)."""
    from PIL import Image

    from packing.tiles import split_into_tiles

    if MEDIA_MEMBER in raw:
        raw = media_files(raw[MEDIA_MEMBER])
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
    """Mono float32 samples at `sample_rate` of an encoded clip, decoded in process with PyAV."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


def as_array(value: Any) -> np.ndarray:
    """A token array from .npy bytes or an already decoded array (webdataset .decode(), Energon, datasets)."""
    if isinstance(value, (bytes, bytearray)):
        return np.load(io.BytesIO(value), allow_pickle=False)
    return np.asarray(value)


def to_tensors(raw: dict[str, Any], decode: bool = True, tile_size: int = 448,
               rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One packed sequence (raw or decoded WebDataset members) as the tensors described above."""
    import torch

    meta = json.loads(raw[JSON_MEMBER]) if isinstance(raw[JSON_MEMBER], (bytes, str)) else raw[JSON_MEMBER]
    ids, labels = as_array(raw[IDS_MEMBER]), as_array(raw[LABELS_MEMBER])
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

    dataset = wds.WebDataset(shard_paths(shards), shardshuffle=False, empty_check=False)
    rng = np.random.default_rng(augment_seed) if augment_seed is not None else None
    for raw in dataset:
        yield to_tensors(raw, decode=decode, tile_size=tile_size, rng=rng)


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PackedDataset(torch.utils.data.IterableDataset):
    """Packed sequences for a PyTorch DataLoader, split across ranks and DataLoader workers.

    Every epoch the shard order is shuffled with (seed, epoch) (when shuffle_buffer > 0), the
    sequences of all shards are laid end to end in that order, and consumer c of C
    (c = rank * workers + worker) reads the contiguous range [c*N/C, (c+1)*N/C): each sequence
    is read exactly once per epoch, ranks differ by at most one sequence, and a consumer opens
    only the shards its range touches. Inside its range a consumer shuffles with a buffer of
    `shuffle_buffer` sequences seeded by (seed, epoch, consumer). Use batch_size=None in the
    DataLoader: a packed sequence is already a batch. Call set_epoch(e) before each epoch
    (workers are re-created per epoch unless persistent_workers=True, which then keeps the old epoch).
    Yields the same dicts as iter_packed; `augment_seed` turns on its JPEG re-compression, drawn
    per (augment_seed, epoch, consumer).
    """

    def __init__(self, shards: str | Path | list[str], *, rank: int | None = None,
                 world_size: int | None = None, shuffle_buffer: int = 0, seed: int = 0, epoch: int = 0,
                 decode: bool = True, tile_size: int = 448, augment_seed: int | None = None) -> None:
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ValueError("PackedDataset: give both rank and world_size, or neither "
                             "(then they come from torch.distributed, or 0 and 1)")
        if rank is None:
            rank, world_size = _dist_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"PackedDataset: rank={rank} must be in [0, world_size={world_size})")
        if shuffle_buffer < 0:
            raise ValueError(f"PackedDataset: shuffle_buffer={shuffle_buffer} must be >= 0 (0 = no shuffle)")
        self.paths = shard_paths(shards)
        self.counts = count_sequences(self.paths)
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, epoch
        self.decode, self.tile_size, self.augment_seed = decode, tile_size, augment_seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Sequences this rank reads per epoch (all its workers together)."""
        lo, hi = consumer_range(sum(self.counts), self.rank, self.world_size)
        return hi - lo

    def consumer(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def plan(self, consumer: int, consumers: int) -> list[tuple[str, int, int]]:
        """(shard path, first, end) sequence ranges this consumer reads, in shard order."""
        order = list(range(len(self.paths)))
        if self.shuffle_buffer:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(order)).tolist()
        lo, hi = consumer_range(sum(self.counts), consumer, consumers)
        out, start = [], 0
        for i in order:
            end = start + self.counts[i]
            if end > lo and start < hi:
                out.append((self.paths[i], max(lo, start) - start, min(hi, end) - start))
            start = end
        return out

    def raw_sequences(self, consumer: int, consumers: int) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        # the split is ours (plan); webdataset's own node and worker splitters are switched off
        for path, first, end in self.plan(consumer, consumers):
            for k, raw in enumerate(wds.WebDataset(path, shardshuffle=False, empty_check=False,
                                                  nodesplitter=None, workersplitter=None)):
                if k >= end:
                    break
                if k >= first:
                    yield raw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer, consumers = self.consumer()
        rng = (None if self.augment_seed is None
               else np.random.default_rng([self.augment_seed, self.epoch, consumer]))
        stream = self.raw_sequences(consumer, consumers)
        if self.shuffle_buffer:
            stream = shuffled(stream, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, consumer]))
        for raw in stream:
            yield to_tensors(raw, decode=self.decode, tile_size=self.tile_size, rng=rng)


def shuffled(stream: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A shuffle buffer: keep `size` items, emit a random one as each new item arrives."""
    buf: list[Any] = []
    for item in stream:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))

