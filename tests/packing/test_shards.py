"""Shard round trip: writer -> plain webdataset reader -> tensors with cu_seqlens."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from packing.loader import iter_packed, loss_weights, sample_boundaries
from packing.shards import pack_sequence, verify_shards, write_index, write_shard


@pytest.fixture()
def samples(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (900, 450), "red").save(img)
    frames = []
    for k in range(2):
        f = tmp_path / f"f{k}.jpg"
        Image.new("RGB", (448, 448), (k * 100, 0, 0)).save(f)
        frames.append(str(f))
    image = {"kind": "image", "path": str(img), "sha256": "a" * 64, "grid_w": 2, "grid_h": 1, "tiles": 3,
             "width": 900, "height": 450, "frames": None, "duration": None}
    video = {"kind": "video", "path": "v.mp4", "sha256": "b" * 64, "frames": frames, "tiles": 2, "duration": 1.0}
    return [
        {"id": "s1", "source": "x", "modality": "image", "input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4],
         "n_tiles": 3, "n_response_tokens": 2, "media": [image]},
        {"id": "s2", "source": "x", "modality": "video", "input_ids": [5, 6, 7], "labels": [-100, 6, 7],
         "n_tiles": 2, "n_response_tokens": 2, "media": [video]},
        {"id": "s3", "source": "y", "modality": "text", "input_ids": [8, 9], "labels": [-100, 9],
         "n_tiles": 0, "n_response_tokens": 1, "media": []},
    ]


def test_round_trip_with_plain_webdataset_and_loader(tmp_path, samples):
    import webdataset as wds

    seqs = [pack_sequence("000000-00000000", 0, samples[:2]), pack_sequence("000000-00000001", 1, samples[2:])]
    entry = write_shard(tmp_path / "out" / "shard-000000.tar", seqs)
    assert entry["sequences"] == 2 and entry["samples"] == 3 and entry["tokens"] == 9 and entry["tiles"] == 5
    raw = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False).decode())
    assert [r["__key__"] for r in raw] == ["000000-00000000", "000000-00000001"]
    assert raw[0]["input_ids.npy"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert raw[0]["json"]["samples"][1]["token_offset"] == 4

    packed = list(iter_packed(tmp_path / "out"))
    first = packed[0]
    assert first["cu_seqlens"].tolist() == [0, 4, 7]
    assert first["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert first["labels"].tolist() == [-100, -100, 3, 4, -100, 6, 7]
    assert tuple(first["pixel_values"].shape) == (5, 3, 448, 448)  # 2x1 grid + thumbnail + 2 frames
    assert packed[1]["pixel_values"].shape[0] == 0


def test_shards_have_no_pickle_and_are_reproducible(tmp_path, samples):
    a = write_shard(tmp_path / "a" / "s.tar", [pack_sequence("k", 0, samples)])
    b = write_shard(tmp_path / "b" / "s.tar", [pack_sequence("k", 0, samples)])
    assert a["sha256"] == b["sha256"]
    with tarfile.open(tmp_path / "a" / "s.tar") as tf:
        names = tf.getnames()
        assert not any(n.endswith((".pyd", ".pickle", ".pkl")) for n in names)
        arr = np.load(io.BytesIO(tf.extractfile("k.input_ids.npy").read()), allow_pickle=False)
        assert arr.dtype == np.int32
    assert not list((tmp_path / "a").glob(".*tmp*"))


def test_verify_detects_tampering(tmp_path, samples):
    entry = write_shard(tmp_path / "shard-000000.tar", [pack_sequence("k", 0, samples)])
    write_index(tmp_path, [entry], {"max_tokens": 16, "max_tiles": 8})
    assert verify_shards(tmp_path) == []
    with open(tmp_path / "shard-000000.tar", "r+b") as f:
        f.seek(600)
        f.write(b"X")
    assert any("sha256" in p for p in verify_shards(tmp_path))
    (tmp_path / "extra.tar").write_bytes(b"")
    assert any("not in index" in p for p in verify_shards(tmp_path))


def test_boundaries_and_square_loss_weights():
    samples = [{"token_offset": 0, "n_tokens": 3}, {"token_offset": 3, "n_tokens": 5}]
    cu, pos = sample_boundaries(samples, 8)
    assert cu.tolist() == [0, 3, 8] and pos.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    labels = np.array([-100, 1, 1, -100, 1, 1, 1, 1])
    w = loss_weights(samples, labels)
    assert w[1] == pytest.approx(1 / 2**0.5) and w[4] == pytest.approx(1 / 4**0.5) and w[0] == 0
    with pytest.raises(ValueError):
        sample_boundaries(samples, 9)


def test_augment_flag_recompresses_images_only_for_flagged_sources(tmp_path, samples):
    write_shard(tmp_path / "s" / "shard-000000.tar", [pack_sequence("k", 0, samples, frozenset({"x"}))])
    plain = next(iter_packed(tmp_path / "s"))
    aug = next(iter_packed(tmp_path / "s", augment_seed=1))
    assert [s["augment"] for s in plain["samples"]] == [True, True, False]
    n_image_tiles = 3
    assert not np.allclose(plain["pixel_values"][:n_image_tiles], aug["pixel_values"][:n_image_tiles])
    assert np.allclose(plain["pixel_values"][n_image_tiles:], aug["pixel_values"][n_image_tiles:])  # video frames
