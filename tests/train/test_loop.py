"""The training loop: JSON log, resume gives the same loss curve, DDP ranks never share a sequence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate.recipe import load_recipe
from tests.train.conftest import RECIPE, train_overrides
from train.data import split
from train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def test_rank_split_covers_every_sequence_once():
    train0, val = split(10, 0, 2, val_every=5)
    train1, _ = split(10, 1, 2, val_every=5)
    assert val == [4, 9] and not set(train0) & set(train1)
    assert sorted(train0 + train1 + val) == list(range(10))


def test_resume_continues_the_same_loss_curve(tiny_assets, tiny_run, tmp_path):
    def recipe(ckpt, *extra):
        return load_recipe(RECIPE, train_overrides(tiny_assets, f"train.checkpoint_dir={ckpt}", "train.max_steps=4",
                                                   *extra))

    full = train(recipe(tmp_path / "a"), str(tiny_run), log=str(tmp_path / "a.jsonl"))
    # interrupted run: 2 steps with a checkpoint, then --resume to 4 (the schedule is the same: total 4 steps)
    rec = recipe(tmp_path / "b", "train.checkpoint_interval=2")
    part = _train_until(rec, tiny_run, stop_after=2, log=tmp_path / "b.jsonl")
    rest = train(rec, str(tiny_run), log=str(tmp_path / "b.jsonl"), resume=True)
    assert [r["step"] for r in part + rest] == [1, 2, 3, 4]
    assert [r["loss"] for r in part + rest] == pytest.approx([r["loss"] for r in full], abs=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= {"step", "loss", "loss_by_modality", "modality_weights", "lr", "tokens_per_s", "seconds"}
    assert set(rows[0]["loss_by_modality"]) <= {"text", "image", "audio"} and rows[0]["loss"] > 0


def _train_until(rec, run, stop_after, log):
    """A run of the same 4-step schedule stopped after `stop_after` steps (a checkpoint was written there)."""
    import train.loop as loop

    class Stop(Exception):
        pass

    def echo(*_):
        pass

    original = loop.save_checkpoint

    def save_then_stop(folder, step, *args):
        original(folder, step, *args)
        if step == stop_after:
            raise Stop

    loop.save_checkpoint = save_then_stop
    try:
        rows = loop.train(rec, str(run), log=str(log), echo=echo)
    except Stop:
        rows = [json.loads(line) for line in Path(log).read_text().splitlines()]
    finally:
        loop.save_checkpoint = original
    return rows


@pytest.mark.slow
def test_two_cpu_ranks_on_gloo_read_each_sequence_once(tiny_assets, tiny_run, tmp_path):
    sets = [x for o in train_overrides(tiny_assets, f"train.checkpoint_dir={tmp_path}/ckpt") for x in ("--set", o)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    log = tmp_path / "ddp.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29617",
           "-m", "curate", "train", str(RECIPE), "--shards", str(tiny_run), "--max-steps", "4",
           "--log-file", str(log), *sets]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [k for r in rows for k in r["sequences"]]
    assert len(rows) == 4 and len(keys) == 8 and len(set(keys)) == 8  # 8 sequences, 2 ranks x 4 steps: one epoch


def test_stream_reads_sequences_by_offset_with_the_same_bytes_as_webdataset(tiny_run):
    import webdataset as wds

    from train.data import SequenceStream, read_sequence, shard_paths

    paths = shard_paths(tiny_run)
    expected = list(wds.WebDataset(paths, shardshuffle=False, empty_check=False))
    stream = SequenceStream(tiny_run, val_every=4)
    assert [e.key for e in stream.index] == [r["__key__"] for r in expected]
    for entry, want in zip(stream.index, expected):
        got = read_sequence(entry)
        assert {k: v for k, v in got.items() if not k.startswith("__")} == \
            {k: v for k, v in want.items() if not k.startswith("__")}
    assert stream.modalities() == ["audio", "image", "text"]
    assert len(list(stream.validation())) == len(stream.val_ids) > 0
