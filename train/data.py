"""Packed sequences for one rank: the only place the training loop touches the shards.

Sequence k of the run's shards (in sorted shard order) belongs to rank k % world_size, so
ranks never share a sequence. A deterministic subset (every `val_every`-th sequence) is held
out for validation (the dynamic balance's per-modality validation loss) and never trained on.
Each epoch visits the rank's training sequences in an order drawn from (seed, epoch); the data
position saved in a checkpoint is (epoch, index into that order).

Memory stays flat whatever the run's size: at start every rank reads only the tar headers and
the small `.json` member of each sequence (where each member's bytes lie in its shard file);
a sequence's tokens and media are read by seeking to them when it is used.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def shard_paths(shards: str | Path) -> list[str]:
    """The .tar shards of a run folder, a shard folder, or one shard file, in sorted order."""
    p = Path(shards)
    if p.is_file():
        return [str(p)]
    folder = p / "shards" if (p / "shards").is_dir() else p
    paths = sorted(str(x) for x in folder.glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"--shards {shards}: no .tar shards in {folder} (give a run folder or its shards/)")
    return paths


@dataclass(frozen=True)
class SequenceEntry:
    """Where one packed sequence's members lie: {member suffix: (offset, size)} in `path`."""
    key: str
    path: str
    members: tuple[tuple[str, int, int], ...]
    modalities: tuple[str, ...]
    tokens: int
    samples: int


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the name up to the first dot of its last path part."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix


def _read(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def index_shard(path: str) -> list[SequenceEntry]:
    """Every sequence of one shard, from its tar headers and `.json` members only."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    with tarfile.open(path) as tf:  # uncompressed tar: getmembers() seeks from header to header
        for m in tf.getmembers():
            if m.isfile():
                key, suffix = _split_name(m.name)
                groups.setdefault(key, []).append((suffix, m.offset_data, m.size))
    out = []
    with open(path, "rb") as f:
        for key, members in groups.items():
            where = {suffix: (off, size) for suffix, off, size in members}
            if "json" not in where:
                raise ValueError(f"{path}: sequence {key} has no .json member (not a packed shard?)")
            meta = json.loads(_read(f, *where["json"]))
            out.append(SequenceEntry(key, path, tuple(members),
                                     tuple(sorted({s["modality"] for s in meta["samples"]})),
                                     sum(s["n_tokens"] for s in meta["samples"]), len(meta["samples"])))
    return out


def sequence_index(paths: list[str]) -> list[SequenceEntry]:
    return [entry for p in paths for entry in index_shard(p)]


def read_sequence(entry: SequenceEntry) -> dict[str, Any]:
    """The raw members (bytes) of one sequence, as a WebDataset iterator would yield them."""
    raw: dict[str, Any] = {"__key__": entry.key, "__url__": entry.path}
    with open(entry.path, "rb") as f:
        for suffix, off, size in entry.members:
            raw[suffix] = _read(f, off, size)
    return raw


def read_raw(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Raw sequences of the shards in order (for tools that scan, like verify-packing)."""
    for p in paths:
        for entry in index_shard(p):
            yield read_sequence(entry)


def split(n: int, rank: int, world_size: int, val_every: int) -> tuple[list[int], list[int]]:
    """(train, validation) sequence numbers of one rank; validation = every val_every-th sequence."""
    val = [k for k in range(n) if val_every and k % val_every == val_every - 1]
    held = set(val)
    train = [k for k in range(n) if k not in held and k % world_size == rank]
    return train, val


def decode(raw: dict[str, Any], tile_size: int = 448) -> dict[str, Any]:
    """Tensors of one packed sequence: the loader's to_tensors (cu_seqlens, position ids, tiles, audio)."""
    from packing.loader import to_tensors

    return to_tensors(raw, decode=True, tile_size=tile_size)


def epoch_order(train: list[int], seed: int, epoch: int) -> list[int]:
    rng = np.random.default_rng([seed, epoch])
    return [train[i] for i in rng.permutation(len(train))]


class SequenceStream:
    """Endless, resumable stream of one rank's training sequences, read from the shards on use."""

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
        self.order = epoch_order(self.train_ids, seed, 0)

    def modalities(self) -> list[str]:
        return sorted({m for e in self.index for m in e.modalities})

    def next(self) -> dict[str, Any]:
        if self.pos >= len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = epoch_order(self.train_ids, self.seed, self.epoch)
        k = self.order[self.pos]
        self.pos += 1
        return decode(read_sequence(self.index[k]), self.tile_size)

    def validation(self) -> Iterator[dict[str, Any]]:
        for k in self.val_ids:
            yield decode(read_sequence(self.index[k]), self.tile_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = epoch_order(self.train_ids, self.seed, self.epoch)


def seen_keys(stream: SequenceStream, n: int) -> list[str]:
    """Keys of the next n training sequences (for tests of the rank split)."""
    return [stream.next()["key"] for _ in range(n)]
