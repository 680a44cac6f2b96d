"""The packed shard format, in one place: what a shard holds and how any reader reads it.

A run's shards/ folder holds SHARD_PATTERN tar files and INDEX_NAME. One WebDataset sample
of a shard is one packed sequence, always the four members of MEMBERS (packing.shards writes
them; see there for their contents). The token ids use the special tokens below (the tokenize
stage writes them, the model replaces the context tokens by media embeddings) and the labels
use IGNORE for every token that is not trained.

Readers share this module: the tar reader (`scan_shard`, `index_shard`, `read_sequence`: tar
headers and JSON members only, a sequence's other bytes read by seeking to them), `shard_paths`,
the rank split (`consumer_range`) and the loss weights (`loss_weights`), so PyTorch's
PackedDataset, the training loop, the Hugging Face and Energon readers and `curate find` agree.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT = "omnicurate-packed-v2"  # index.json's "format", Energon's subflavor
SHARD_PATTERN = "shard-{:06d}.tar"
INDEX_NAME = "index.json"
IDS_MEMBER = "input_ids.npy"  # int32 token ids of all samples, concatenated
JSON_MEMBER = "json"  # {"sequence", "n_tokens", "n_tiles", "samples": [...]}
LABELS_MEMBER = "labels.npy"  # int32 labels, IGNORE where nothing is trained
MEDIA_MEMBER = "media.mp"  # msgpack {"audio": [{"path", "bytes"}], "images": [{"path", "bytes"}]}
MEMBERS = (IDS_MEMBER, JSON_MEMBER, LABELS_MEMBER, MEDIA_MEMBER)  # sorted, as written

IGNORE = -100  # label of a token that is not trained (prompts, media, padding); PyTorch's ignore_index

# ChatML turns (Qwen / InternVL 2.5) and the media spans the tokenize stage writes:
# <img> + tiles x tokens_per_tile <IMG_CONTEXT> + </img>, <audio_start> + <AUDIO_CONTEXT> x n + <audio_end>
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
AUDIO_START, AUDIO_END, AUDIO_CONTEXT = "<audio_start>", "<audio_end>", "<AUDIO_CONTEXT>"
SPECIAL_TOKENS = [IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, AUDIO_START, AUDIO_END, AUDIO_CONTEXT]


# ---------------------------------------------------------------------------- where the shards are
def shard_paths(shards: str | Path | list[str]) -> list[str]:
    """Tar paths from a run folder (its shards/), a shard folder, one shard file, a brace pattern
    ("shard-{000000..000003}.tar") or a list; a folder's shards in sorted order."""
    if not isinstance(shards, (str, Path)):
        return [str(s) for s in shards]
    p = Path(shards)
    if p.is_dir():
        folder = p / "shards" if (p / "shards").is_dir() else p
        found = sorted(str(x) for x in folder.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"{shards}: no .tar shards in {folder} "
                                    "(give a run folder or its shards/)")
        return found
    if p.is_file():
        return [str(p)]
    import braceexpand

    return list(braceexpand.braceexpand(str(shards)))


# ---------------------------------------------------------------------------- the tar reader
@dataclass(frozen=True)
class SequenceEntry:
    """Where one packed sequence's members lie: {member suffix: (offset, size)} in `path`."""
    key: str
    path: str
    members: tuple[tuple[str, int, int], ...]
    modalities: tuple[str, ...]
    tokens: int
    samples: int


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the name up to the first dot of its last path part."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix


def tar_members(path: str | Path) -> dict[str, list[tuple[str, int, int]]]:
    """key -> [(member suffix, data offset, size)] of one shard, in tar order, from its headers only."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    with tarfile.open(path) as tf:  # uncompressed tar: getmembers() seeks from header to header
        for m in tf.getmembers():
            if m.isfile():
                key, suffix = split_name(m.name)
                groups.setdefault(key, []).append((suffix, m.offset_data, m.size))
    return groups


def _read(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def scan_shard(path: str | Path) -> Iterator[tuple[str, tuple[tuple[str, int, int], ...], dict[str, Any]]]:
    """(key, members, parsed JSON member) of every sequence of one shard; reads headers and JSON only."""
    groups = tar_members(path)
    with open(path, "rb") as f:
        for key, members in groups.items():
            where = {suffix: (off, size) for suffix, off, size in members}
            if JSON_MEMBER not in where:
                raise ValueError(f"{path}: sequence {key} has no .{JSON_MEMBER} member (not a packed shard?)")
            yield key, tuple(members), json.loads(_read(f, *where[JSON_MEMBER]))


def index_shard(path: str) -> list[SequenceEntry]:
    """Every sequence of one shard, from its tar headers and `.json` members only."""
    return [SequenceEntry(key, path, members, tuple(sorted({s["modality"] for s in meta["samples"]})),
                          sum(s["n_tokens"] for s in meta["samples"]), len(meta["samples"]))
            for key, members, meta in scan_shard(path)]


def sequence_index(paths: list[str]) -> list[SequenceEntry]:
    return [entry for p in paths for entry in index_shard(p)]


def read_members(path: str | Path, members: tuple[tuple[str, int, int], ...]) -> dict[str, bytes]:
    """member suffix -> bytes of one sequence, read by seeking to each member."""
    with open(path, "rb") as f:
        return {suffix: _read(f, off, size) for suffix, off, size in members}


def read_sequence(entry: SequenceEntry) -> dict[str, Any]:
    """The raw members (bytes) of one sequence, as a WebDataset iterator would yield them."""
    return {"__key__": entry.key, "__url__": entry.path} | read_members(entry.path, entry.members)


def read_raw(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Raw sequences of the shards in order (for tools that scan, like verify-packing)."""
    for p in paths:
        for entry in index_shard(p):
            yield read_sequence(entry)


def count_sequences(paths: list[str]) -> list[int]:
    """Sequences per shard: from the folder's index.json when it lists the shard, else from tar headers."""
    counts = []
    indexes: dict[Path, dict[str, int]] = {}
    for p in paths:
        folder = Path(p).parent
        if folder not in indexes:
            index = folder / INDEX_NAME
            indexes[folder] = ({e["shard"]: e["sequences"] for e in json.loads(index.read_text())["shards"]}
                               if index.exists() else {})
        n = indexes[folder].get(Path(p).name)
        counts.append(len(tar_members(p)) if n is None else n)
    return counts


def media_files(data: bytes | dict[str, Any]) -> dict[str, bytes]:
    """Member name -> bytes from a media member (raw bytes, or already decoded by a webdataset reader)."""
    import msgpack

    media = msgpack.unpackb(data, raw=False) if isinstance(data, (bytes, bytearray)) else data
    return {m["path"]: m["bytes"] for kind in ("images", "audio") for m in media[kind]}


# ---------------------------------------------------------------------------- rank split
def consumer_range(total: int, consumer: int, consumers: int) -> tuple[int, int]:
    """[lo, hi) of `total` sequences laid end to end that consumer c of C reads: [c*N/C, (c+1)*N/C).

    Every sequence goes to exactly one consumer, consumers differ by at most one sequence, and
    a consumer's sequences are contiguous (a streaming reader opens only the shards they touch).
    """
    return consumer * total // consumers, (consumer + 1) * total // consumers


# ---------------------------------------------------------------------------- loss weights
def trained_mask(samples: list[dict[str, Any]], labels: np.ndarray) -> np.ndarray:
    """The tokens the loss trains: label != IGNORE, except each sample's first token.

    Labels are shifted for next-token prediction: the label at t is predicted from position t-1,
    and a sample's first token has no position of its own sample before it (the one before
    belongs to the previous sample), so it is never trained and never counted.
    """
    mask = np.asarray(labels) != IGNORE
    for s in samples:
        if s["n_tokens"]:
            mask[s["token_offset"]] = False
    return mask


def loss_weights(samples: list[dict[str, Any]], labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Weight 1 / x**power per trained token (x = its sample's trained tokens, see trained_mask), 0 elsewhere.

    InternVL 2.5, sec. 3.4: power 0 is token averaging, 1 sample averaging, 0.5 square averaging.
    """
    trained = trained_mask(samples, labels)
    w = np.zeros(len(trained), dtype=np.float32)
    for s in samples:
        sl = slice(s["token_offset"], s["token_offset"] + s["n_tokens"])
        x = max(int(trained[sl].sum()), 1)
        w[sl][trained[sl]] = 1.0 / x**power
    return w
