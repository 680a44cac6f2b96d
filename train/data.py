"""Packed sequences for one rank: the only place the training loop touches the shards.

A deterministic subset (every `val_every`-th sequence, in sorted shard order) is held out for
validation (the dynamic balance's per-modality validation loss) and never trained on; the
other sequences are split among the ranks as PackedDataset splits them (packing.format's
consumer_range: contiguous ranges, sizes differing by at most one), so ranks never share one.
Each epoch visits the rank's training sequences in an order drawn from (seed, epoch); the data
position saved in a checkpoint is (epoch, index into that order).

Memory stays flat whatever the run's size: at start every rank reads only the tar headers and
the small `.json` member of each sequence (packing.format.index_shard: where each member's bytes
lie in its shard file); a sequence's tokens and media are read by seeking to them when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from packing.format import (
    SequenceEntry,
    consumer_range,
    index_shard,
    read_raw,
    read_sequence,
    sequence_index,
    shard_paths,
)

# the shard reader lives in packing.format; its names stay importable from here
__all__ = ["SequenceEntry", "index_shard", "read_raw", "read_sequence", "sequence_index", "shard_paths",
           "split", "decode", "epoch_order", "SequenceStream", "seen_keys"]


def split(n: int, rank: int, world_size: int, val_every: int) -> tuple[list[int], list[int]]:
    """(train, validation) sequence numbers of one rank; validation = every val_every-th sequence."""
    val = [k for k in range(n) if val_every and k % val_every == val_every - 1]
    held = set(val)
    rest = [k for k in range(n) if k not in held]
    lo, hi = consumer_range(len(rest), rank, world_size)
    return rest[lo:hi], val


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
