"""PackedDataset: rank and worker sharding (each sequence once per epoch), a seeded shuffle buffer."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from packing.loader import PackedDataset, iter_packed
from packing.shards import pack_sequence, write_index, write_shard


def text_shards(folder, sizes=(7, 3, 5), with_index=True):
    """Shards of text-only sequences; sequence k holds tokens [k, k+1, k+2] so contents are checkable."""
    entries, k = [], 0
    for shard, n in enumerate(sizes):
        seqs = []
        for _ in range(n):
            sample = {"id": f"s{k}", "source": "x", "modality": "text", "input_ids": [k, k + 1, k + 2],
                      "labels": [-100, k + 1, k + 2], "n_tiles": 0, "n_response_tokens": 2, "media": []}
            seqs.append(pack_sequence(f"{shard:06d}-{k:08d}", k, [sample]))
            k += 1
        entries.append(write_shard(folder / f"shard-{shard:06d}.tar", seqs))
    if with_index:
        write_index(folder, entries, {"max_tokens": 8, "max_tiles": 0})
    return [f"{shard:06d}-{j:08d}" for shard, n in enumerate(sizes)
            for j in range(sum(sizes[:shard]), sum(sizes[:shard + 1]))]


def keys_over_ranks(folder, world_size=2, workers=2, **kw):
    per_rank = []
    for rank in range(world_size):
        ds = PackedDataset(folder, rank=rank, world_size=world_size, decode=False, **kw)
        loader = DataLoader(ds, batch_size=None, num_workers=workers)
        per_rank.append([seq["key"] for seq in loader])
        assert len(per_rank[-1]) == len(ds)
    return per_rank


@pytest.mark.parametrize("with_index", [True, False])
def test_two_workers_times_two_ranks_read_each_sequence_once(tmp_path, with_index):
    keys = text_shards(tmp_path, with_index=with_index)
    for shuffle in (0, 4):
        per_rank = keys_over_ranks(tmp_path, shuffle_buffer=shuffle, seed=3)
        seen = [k for r in per_rank for k in r]
        assert sorted(seen) == sorted(keys) and len(set(seen)) == len(keys)
        assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1


def test_shuffle_buffer_is_seeded_and_changes_with_epoch(tmp_path):
    keys = text_shards(tmp_path, sizes=(10, 10, 10))

    def order(seed, epoch):
        ds = PackedDataset(tmp_path, rank=0, world_size=1, shuffle_buffer=8, seed=seed, decode=False)
        ds.set_epoch(epoch)
        return [s["key"] for s in DataLoader(ds, batch_size=None, num_workers=2)]

    a = order(1, 0)
    assert a == order(1, 0) and sorted(a) == sorted(keys)
    assert a != order(2, 0) and a != order(1, 1)
    plain = [s["key"] for s in PackedDataset(tmp_path, rank=0, world_size=1, decode=False)]
    assert plain == keys  # no shuffle: shard and member order


def test_tensors_equal_iter_packed(tmp_path):
    text_shards(tmp_path, sizes=(4, 2))
    expected = {s["key"]: s for s in iter_packed(tmp_path, decode=False)}
    got = list(DataLoader(PackedDataset(tmp_path, shuffle_buffer=3, decode=False), batch_size=None, num_workers=2))
    assert len(got) == len(expected)
    for seq in got:
        ref = expected[seq["key"]]
        for name in ("input_ids", "labels", "position_ids", "cu_seqlens", "loss_weight"):
            assert torch.equal(seq[name], ref[name]), name
        assert seq["samples"] == ref["samples"]
    first = next(iter(PackedDataset(tmp_path)))
    assert first["input_ids"].tolist() == [0, 1, 2] and first["pixel_values"].shape[0] == 0


def test_bad_arguments_name_the_fix(tmp_path):
    text_shards(tmp_path, sizes=(2,))
    with pytest.raises(ValueError, match="rank"):
        PackedDataset(tmp_path, rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        PackedDataset(tmp_path, rank=0)
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        PackedDataset(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


@pytest.mark.parametrize("rate", [16000, 44100])
def test_flac_decodes_in_process_as_ffmpeg_does(rate):
    import subprocess

    import numpy as np

    from packing.loader import decode_flac

    flac = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anoisesrc=d=1.3:c=pink", "-ar", str(rate),
                           "-ac", "1", "-f", "flac", "pipe:1"], capture_output=True, check=True).stdout
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "16000", "-f", "s16le", "pipe:1"],
                         input=flac, capture_output=True, check=True).stdout
    want = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    got = decode_flac(flac)
    assert got.dtype == np.float32 and len(got) == len(want) == 20800
    assert np.abs(got - want).max() < 1e-3 and np.abs(got).max() > 0.05
