"""`curate find` and `curate inspect` on a hand-built run folder (one shard, one reject)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import main
from curate.demo import build_tokenizer, prose_topics
from curate.layout import RunLayout
from curate.lookup import describe_sample, find_sample, read_sequences
from curate.stages.tokenize import AUDIO_CONTEXT, IGNORE, IMG_CONTEXT, ChatEncoder, load_tokenizer
from packing.shards import pack_sequence, write_index, write_shard


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder: image+audio sample `img-0` and its split part `img-0#1` in one sequence, `bad-1` rejected."""
    root = tmp_path_factory.mktemp("run")
    tok_dir = build_tokenizer(root / "tok", [b for _, b in prose_topics(30)], vocab_size=800)
    enc = ChatEncoder(load_tokenizer(str(tok_dir)), 16, 50, 3)
    img = root / "a.png"
    Image.new("RGB", (64, 32), "red").save(img)
    wav = root / "a.flac"
    wav.write_bytes(b"\0" * 321)
    image = {"kind": "image", "path": str(img), "sha256": "a" * 64, "grid_w": 2, "grid_h": 1, "tiles": 3,
             "width": 64, "height": 32, "frames": None, "duration": None}
    audio = {"kind": "audio", "path": str(wav), "sha256": "b" * 64, "frames": None, "tiles": 0, "duration": 2.6}
    rows = []
    for rid, orig, media, q in (("h1", "img-0", [image, audio], "<image>\n<audio>\nWhat colour is it?"),
                                ("h1#1", "img-0#1", [], "And the sky?")):
        row = {"id": rid, "orig_id": orig, "source": "demo", "modality": "image", "media": media,
               "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "It is red."}]}
        e = enc.encode(row)
        row.update(input_ids=e.input_ids, labels=e.labels, n_tiles=e.n_tiles,
                   n_response_tokens=sum(lab != IGNORE for lab in e.labels))
        rows.append(row)
    layout = RunLayout(root)
    layout.shards.mkdir()
    entry = write_shard(layout.shards / "shard-000000.tar", [pack_sequence("000000-00000000", 0, rows)])
    write_index(layout.shards, [entry], {"max_tokens": 4096, "max_tiles": 8})
    pq.write_table(pa.table({"id": ["h1", "h1#1"], "orig_id": ["img-0", "img-0#1"], "source": ["demo"] * 2,
                             "origin": ["manifest", "synthesized:pack"], "modality": ["image"] * 2,
                             "n_tokens": [len(r["input_ids"]) for r in rows], "n_tiles": [3, 0],
                             "copies": [1, 1]}), layout.contents)
    layout.rejects_dir.mkdir()
    pq.write_table(pa.table({"id": ["h2"], "orig_id": ["bad-1"], "source": ["demo"], "origin": ["manifest"],
                             "modality": ["text"], "manifest": ["/d/m.jsonl"], "line": [4],
                             "reject_stage": ["filter"], "reject_reason": ["repetitive"],
                             "reject_detail": ["repetition_score=0.9"]}), layout.rejects("filter"))
    return root, rows, str(tok_dir)


def test_find_by_manifest_id_gives_shard_sequence_offset_and_children(run):
    root, rows, _ = run
    found = find_sample(root, "img-0")
    assert [p["orig_id"] for p in found["placed"]] == ["img-0", "img-0#1"]
    assert found["placed"][0]["shard"] == "shard-000000.tar" and found["placed"][0]["sequence"] == 0
    assert found["placed"][1]["token_offset"] == len(rows[0]["input_ids"])  # the part follows its parent
    assert found["rejected"] == []
    assert find_sample(root, "h1#1")["placed"][0]["orig_id"] == "img-0#1"  # the pipeline id works too
    assert find_sample(root, "img-0#1")["placed"][0]["id"] == "h1#1"  # a child alone, not its parent


def test_find_cli_reports_rejects_and_fails_on_unknown_ids(run):
    root, _, _ = run
    res = CliRunner().invoke(main, ["find", str(root), "bad-1"])
    assert res.exit_code == 0 and "rejected at filter: repetitive" in res.output and "m.jsonl:4" in res.output
    res = CliRunner().invoke(main, ["find", str(root), "img-0", "--json"])
    assert len(json.loads(res.output)["placed"]) == 2
    res = CliRunner().invoke(main, ["find", str(root), "nope"])
    assert res.exit_code == 1 and "not found" in res.output


def test_inspect_collapses_media_runs_and_marks_trained_text(run):
    root, rows, tok_dir = run
    tok = load_tokenizer(tok_dir)
    seq = next(read_sequences(RunLayout(root).shards / "shard-000000.tar"))
    d = describe_sample(seq["meta"]["samples"][0], seq["input_ids"], seq["labels"], tok, seq["members"])
    text = " ".join(t["text"] for t in d["turns"])
    n_audio = rows[0]["input_ids"].count(tok.convert_tokens_to_ids(AUDIO_CONTEXT))
    assert f"[{IMG_CONTEXT} x 48 (3 tiles x 16)" in text and f"[{AUDIO_CONTEXT} x {n_audio}]" in text
    assert text.count(IMG_CONTEXT) == 1  # one collapsed run, not 48 tokens
    assert [t["role"] for t in d["turns"]] == ["user", "assistant"]
    assert "«" in d["turns"][1]["text"] and "«" not in d["turns"][0]["text"]  # only the reply is trained
    assert "colour" in d["turns"][0]["text"]
    assert [m["bytes"] for m in d["media"]] == [seq["members"]["m000.png"], 321]


def test_inspect_cli_text_and_json(run):
    root, _, tok_dir = run
    shard = str(RunLayout(root).shards / "shard-000000.tar")
    res = CliRunner().invoke(main, ["inspect", shard, "--tokenizer", tok_dir])
    assert res.exit_code == 0, res.output
    assert "img-0#1" in res.output and "assistant:" in res.output and len(res.output.splitlines()) < 15
    res = CliRunner().invoke(main, ["inspect", shard, "--tokenizer", tok_dir, "--json"])
    seq = json.loads(res.output)
    assert [s["orig_id"] for s in seq["samples"]] == ["img-0", "img-0#1"]
    assert seq["n_tokens"] == int(np.sum([s["n_tokens"] for s in seq["samples"]]))
