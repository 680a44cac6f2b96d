"""The real readers on a small run's shards: Hugging Face datasets, Megatron-Energon, plain webdataset.

Each reads every sequence and must give the tensors of packing.loader.iter_packed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from packing.loader import iter_packed
from packing.shards import MEMBERS, pack_sequence, verify_shards, write_index, write_shard

ROOT = Path(__file__).resolve().parents[2]
TENSORS = ("input_ids", "labels", "position_ids", "cu_seqlens", "loss_weight", "pixel_values")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Three shards (3 + 2 + 2 sequences) with text, image, video and audio; Energon meta with one val shard."""
    from packing.energon_meta import write_energon_meta

    tmp = tmp_path_factory.mktemp("readers")
    img = tmp / "a.png"
    Image.new("RGB", (900, 450), (200, 30, 30)).save(img)
    frames = []
    for k in range(2):
        Image.new("RGB", (448, 448), (k * 90, 60, 0)).save(tmp / f"f{k}.jpg")
        frames.append(str(tmp / f"f{k}.jpg"))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=f=440:d=0.4", "-ar", "16000",
                    "-ac", "1", str(tmp / "a.flac")], check=True)
    media = {
        "image": {"kind": "image", "path": str(img), "sha256": "a" * 64, "grid_w": 2, "grid_h": 1, "tiles": 3,
                  "width": 900, "height": 450},
        "video": {"kind": "video", "path": "v.mp4", "sha256": "b" * 64, "frames": frames, "tiles": 2, "duration": 1.0},
        "audio": {"kind": "audio", "path": str(tmp / "a.flac"), "sha256": "c" * 64, "duration": 0.4},
    }
    tiles = {"image": 3, "video": 2, "audio": 0, "text": 0}

    def sample(k, modality):
        ids = list(range(10 * k, 10 * k + 4 + k % 3))
        return {"id": f"{modality}-{k}", "orig_id": f"line-{k}", "source": "demo", "modality": modality,
                "input_ids": ids, "labels": [-100] + ids[1:], "n_tiles": tiles[modality],
                "n_response_tokens": len(ids) - 1,
                "media": [media[modality]] if modality in media else []}

    plan = [["text"], ["text", "text"], ["text"], ["image", "audio"], ["video"], ["audio", "text"], ["image", "video"]]
    out = tmp / "shards"
    entries, k = [], 0
    for shard, n in enumerate((3, 2, 2)):
        seqs = []
        for _ in range(n):
            seqs.append(pack_sequence(f"{shard:06d}-{k:08d}", k,
                                      [sample(10 * k + j, m) for j, m in enumerate(plan[k])]))
            k += 1
        entries.append(write_shard(out / f"shard-{shard:06d}.tar", seqs))
    write_index(out, entries, {"max_tokens": 64, "max_tiles": 8})
    write_energon_meta(out, val_shards=1)
    return out


@pytest.fixture(scope="module")
def expected(shard_dir):
    return {s["key"]: s for s in iter_packed(shard_dir)}


def assert_same(got: dict, ref: dict) -> None:
    for name in TENSORS:
        assert torch.equal(got[name], ref[name]), name
    assert got["samples"] == ref["samples"]
    assert len(got["audio"]) == len(ref["audio"])
    assert all(np.array_equal(a, b) for a, b in zip(got["audio"], ref["audio"]))


def test_layout_has_the_same_sorted_members_in_every_sequence(shard_dir, expected):
    assert len(expected) == 7 and verify_shards(shard_dir) == []
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            names = tf.getnames()
        assert names == sorted(names) or names == [n for key in sorted({n.split(".", 1)[0] for n in names})
                                                   for n in (f"{key}.{m}" for m in MEMBERS)]
        assert {n.split(".", 1)[1] for n in names} == set(MEMBERS)
    media = [s for s in expected.values() if s["pixel_values"].shape[0] or s["audio"]]
    assert len(media) == 4 and sum(len(s["audio"]) for s in media) == 2


def test_hugging_face_datasets_reads_every_sequence_with_media(shard_dir, expected, tmp_path):
    from datasets import load_dataset

    from packing.hf import hf_to_tensors, packed_features

    files = {"train": sorted(str(p) for p in shard_dir.glob("shard-*.tar"))}
    raw = load_dataset("webdataset", data_files=files, split="train", features=packed_features(decode=False),
                       cache_dir=str(tmp_path))
    assert len(raw) == len(expected)
    for row in raw:
        assert_same(hf_to_tensors(row), expected[row["__key__"]])
    decoded = load_dataset("webdataset", data_files=files, split="train", features=packed_features(),
                           cache_dir=str(tmp_path / "decoded"))
    row = next(r for r in decoded if r["__key__"] == "000002-00000006")  # image + video: 1 image, 2 frames
    images = row["media.mp"]["images"]
    assert [im.size for im in images] == [(900, 450), (448, 448), (448, 448)]
    audio_row = next(r for r in decoded if r["__key__"] == "000001-00000003")
    clip = audio_row["media.mp"]["audio"][0].get_all_samples()
    assert clip.sample_rate == 16000 and np.allclose(clip.data[0].numpy(), expected["000001-00000003"]["audio"][0])


def energon_env() -> dict[str, str]:
    # the CLI imports packing.energon (dataset.yaml names its sample type): this checkout first on the path
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_energon_info_and_lint_accept_the_run(shard_dir):
    energon = Path(sys.executable).with_name("energon")
    info = subprocess.run([str(energon), "info", str(shard_dir)], capture_output=True, text=True, env=energon_env())
    assert info.returncode == 0, info.stderr
    assert "7 samples" in info.stdout and "PackedSequenceSample" in info.stdout
    assert "`train`: 71%, 5 samples in 2 shards" in info.stdout and "`val`: 29%, 2 samples in 1 shards" in info.stdout
    lint = subprocess.run([str(energon), "lint", str(shard_dir)], capture_output=True, text=True, env=energon_env())
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_energon_loader_reads_train_and_val_with_their_own_shards(shard_dir, expected):
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset, get_val_dataset

    from packing.energon import PackedSequenceSample, PackedTaskEncoder

    worker_config = WorkerConfig.default_worker_config(num_workers=0)
    train = get_train_dataset(shard_dir, batch_size=None, shuffle_buffer_size=4, max_samples_per_sequence=None,
                              worker_config=worker_config, repeat=False)
    val = get_val_dataset(shard_dir, batch_size=None, worker_config=worker_config)
    keys = {}
    for split, ds in (("train", train), ("val", val)):
        for seq in get_loader(ds):
            assert isinstance(seq, PackedSequenceSample)
            assert_same(vars(seq), expected[seq.__key__])
            keys.setdefault(split, []).append(seq.__key__)
    assert sorted(keys["train"]) == sorted(k for k in expected if not k.startswith("000002"))
    assert sorted(keys["val"]) == sorted(k for k in expected if k.startswith("000002"))
    crude = get_train_dataset(shard_dir, batch_size=None, shuffle_buffer_size=None, max_samples_per_sequence=None,
                              worker_config=worker_config, repeat=False, dataset_config="crude.yaml",
                              task_encoder=PackedTaskEncoder())
    cooked = list(get_loader(crude))
    assert sorted(s.__key__ for s in cooked) == sorted(keys["train"])
    assert_same(vars(cooked[0]), expected[cooked[0].__key__])


def test_energon_meta_is_reproducible_and_checked_by_verify(shard_dir, tmp_path):
    import shutil

    from packing.energon_meta import write_energon_meta

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    shutil.rmtree(copy / ".nv-meta")
    write_energon_meta(copy, val_shards=1)
    for f in sorted((shard_dir / ".nv-meta").iterdir()):
        assert f.read_bytes() == (copy / ".nv-meta" / f.name).read_bytes(), f.name
    with pytest.raises(ValueError, match="val_shards"):
        write_energon_meta(copy, val_shards=3)
    info = copy / ".nv-meta" / ".info.json"
    info.write_text(info.read_text().replace('"shard-000000.tar": 3', '"shard-000000.tar": 4'))
    assert any("Energon" in p for p in verify_shards(copy))


def test_plain_webdataset_reads_the_media_member(shard_dir, expected):
    import webdataset as wds

    seqs = list(wds.WebDataset(sorted(str(p) for p in shard_dir.glob("*.tar")), shardshuffle=False).decode())
    assert len(seqs) == len(expected)
    by_key = {s["__key__"]: s for s in seqs}
    media = by_key["000002-00000006"]["media.mp"]
    assert [m["path"] for m in media["images"]] == ["m000.png", "m001.jpg", "m002.jpg"] and media["audio"] == []


def readme_snippets() -> list[str]:
    """The Python blocks of the "Reading the shards" section of docs/shard-format.md."""
    text = (ROOT / "docs" / "shard-format.md").read_text()
    section = text.split("## Reading the shards\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1] for block in section.split("```python")[1:]
            for block in [block.split("```", 1)[0]]]


def run_snippet(code: str, loop_body: str | None = None) -> dict:
    """exec a README snippet; `loop_body` (a line of it) is replaced by recording the sequence read."""
    if loop_body is not None:
        assert loop_body in code, f"README snippet changed: {loop_body!r} not found"
        indent = loop_body[:len(loop_body) - len(loop_body.lstrip())]
        code = code.replace(loop_body, f"{indent}seen.append(seq['key'] if isinstance(seq, dict) else seq.__key__)")
    namespace: dict = {"seen": []}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_snippets_run_as_written(shard_dir, expected, tmp_path, monkeypatch):
    """Each snippet, pointed at this test's shards (and a private datasets cache), reads every sequence."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "sft-stage3").mkdir(parents=True)
    (tmp_path / "runs" / "sft-stage3" / "shards").symlink_to(shard_dir)
    plain, torch_loader, hf, energon = readme_snippets()
    keys = sorted(expected)

    ns = run_snippet(plain.replace("shard-{000000..000000}.tar", "shard-{000000..000002}.tar"),  # 3 shards here
                     '    seq["input_ids"], seq["cu_seqlens"], seq["pixel_values"], seq["loss_weight"]')
    assert ns["seen"] == keys and ns["s"]["__key__"] == keys[-1] and set(ns["media"]) == {"audio", "images"}
    ns = run_snippet(torch_loader, "        ...")
    assert sorted(ns["seen"]) == sorted(keys * 2)  # two epochs, each sequence once per epoch
    ns = run_snippet(hf)
    assert len(ns["ds"]) == len(keys) and len(ns["raw"]) == len(keys)
    assert_same(ns["seq"], expected[ns["raw"][0]["__key__"]])
    ns = run_snippet(energon, "    seq.input_ids, seq.cu_seqlens, seq.pixel_values, seq.audio")
    assert sorted(ns["seen"]) == [k for k in keys if not k.startswith("000002")]  # the train split
