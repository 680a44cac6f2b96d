"""Packed sequences for one rank: the only place the training loop touches the shard reader.

Sequence k of the run's shards (in sorted shard order) belongs to rank k % world_size, so
ranks never share a sequence. A deterministic subset (every `val_every`-th sequence) is held
out for validation (the dynamic balance's per-modality validation loss) and never trained on.
Each epoch visits the rank's training sequences in an order drawn from (seed, epoch); the data
position saved in a checkpoint is (epoch, index into that order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def shard_paths(shards: str | Path) -> list[str]:
    p = Path(shards)
    if p.is_file():
        return [str(p)]
    folder = p / "shards" if (p / "shards").is_dir() else p
    paths = sorted(str(x) for x in folder.glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"--shards {shards}: no .tar shards in {folder} (give a run folder or its shards/)")
    return paths


def read_raw(paths: list[str]) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    # every rank reads the (small) sequence index itself and keeps k % world_size == rank (see split)
    yield from wds.WebDataset(paths, shardshuffle=False, empty_check=False, nodesplitter=lambda urls: urls)


def sequence_index(paths: list[str]) -> list[dict[str, Any]]:
    """Key, modalities and token count of every packed sequence, without decoding media."""
    out = []
    for raw in read_raw(paths):
        meta = json.loads(raw["json"])
        out.append({"key": raw["__key__"], "modalities": sorted({s["modality"] for s in meta["samples"]}),
                    "tokens": sum(s["n_tokens"] for s in meta["samples"])})
    return out


def split(n: int, rank: int, world_size: int, val_every: int) -> tuple[list[int], list[int]]:
    """(train, validation) sequence numbers of one rank; validation = every val_every-th sequence."""
    val = [k for k in range(n) if val_every and k % val_every == val_every - 1]
    train = [k for k in range(n) if k not in set(val) and k % world_size == rank]
    return train, val


def load_raw(paths: list[str], wanted: list[int]) -> dict[int, dict[str, Any]]:
    """The encoded members (bytes) of the wanted sequence numbers; decoded per use, so memory stays small."""
    want = set(wanted)
    return {k: raw for k, raw in enumerate(read_raw(paths)) if k in want}


def decode(raw: dict[str, Any], tile_size: int = 448) -> dict[str, Any]:
    """Tensors of one packed sequence: the loader's to_tensors (cu_seqlens, position ids, tiles, audio)."""
    from packing.loader import to_tensors

    return to_tensors(raw, decode=True, tile_size=tile_size)


def epoch_order(train: list[int], seed: int, epoch: int) -> list[int]:
    rng = np.random.default_rng([seed, epoch])
    return [train[i] for i in rng.permutation(len(train))]


class SequenceStream:
    """Endless, resumable stream of one rank's training sequences. The encoded bytes of the rank's
    sequences are kept in memory (fine for the demo-sized runs this loop is the reference for; a
    large run swaps in the streaming PackedDataset) and decoded when used."""

    def __init__(self, shards: str | Path, rank: int = 0, world_size: int = 1, seed: int = 0,
                 val_every: int = 0, tile_size: int = 448):
        self.paths = shard_paths(shards)
        self.index = sequence_index(self.paths)
        self.train_ids, self.val_ids = split(len(self.index), rank, world_size, val_every)
        if not self.train_ids:
            raise ValueError(f"rank {rank} of {world_size} has no training sequence in {shards} "
                             f"({len(self.index)} sequences, {len(self.val_ids)} held out): use fewer ranks")
        self.seed, self.epoch, self.pos = seed, 0, 0
        self.tile_size = tile_size
        self.cache = load_raw(self.paths, self.train_ids + self.val_ids)
        self.order = epoch_order(self.train_ids, seed, 0)

    def next(self) -> dict[str, Any]:
        if self.pos >= len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = epoch_order(self.train_ids, self.seed, self.epoch)
        k = self.order[self.pos]
        self.pos += 1
        return decode(self.cache[k], self.tile_size)

    def validation(self) -> list[dict[str, Any]]:
        return [decode(self.cache[k], self.tile_size) for k in self.val_ids]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = epoch_order(self.train_ids, self.seed, self.epoch)


def seen_keys(stream: SequenceStream, n: int) -> list[str]:
    """Keys of the next n training sequences (for tests of the rank split)."""
    return [stream.next()["key"] for _ in range(n)]
