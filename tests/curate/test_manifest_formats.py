"""Every manifest shape a LLaVA, InternVL, ShareGPT, OpenAI, LLaMA-Factory or Hugging Face user has.

Unit tests read each format without Ray (the JSON array scanner against json.loads on random
arrays cut at every block size, compressed files, each record shape); two pipeline tests run
a small recipe over one file of each format (and an InternVL meta file) and follow every
sample to the shards or the rejects, and check that a manifest of nothing but bad rows stops
after ingest with exit 2.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import re
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.errors import UserError
from curate.json_array import JSONArrayError, count_elements, iter_elements
from curate.manifest import check_manifests, manifest_chunks, manifest_format, read_lines
from curate.manifest_formats import read_sample, sources_from_meta
from curate.recipe import IngestConfig, SourceConfig, load_recipe
from curate.stages.base import RunContext
from curate.stages.ingest import IngestStage, stop_if_nothing_ingested

WORDS = ("river stone window garden pencil orange thunder violin harbor lantern meadow copper puzzle "
         "falcon marble candle forest rocket saddle ribbon glacier pepper velvet anchor biscuit canyon "
         "dolphin ember feather goblet hammock igloo jasmine kettle ladder magnet nectar oyster pillow "
         "quartz raven spruce tulip umbrella walnut yogurt zephyr bramble cobalt dune fjord grotto").split()


def _text(rnd: random.Random, n: int = 14) -> str:
    return " ".join(rnd.sample(WORDS, n)).capitalize() + "."


def _png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _wav(seconds: float = 1.0, rate: int = 16000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


# ---------------------------------------------------------------------------- the JSON array scanner
def _random_value(rnd: random.Random, depth: int = 0):
    r = rnd.random()
    if depth > 3 or r < 0.3:
        return "".join(rnd.choice('ab"\\[]{},: é中\n') for _ in range(rnd.randint(0, 10)))
    if r < 0.5:
        return rnd.choice([rnd.randint(-9, 9), 1.5, True, None])
    if r < 0.75:
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {_random_value(rnd, 9): _random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}


def test_array_scanner_gives_json_loads_elements_at_every_block_and_piece_size():
    rnd = random.Random(7)
    for _ in range(400):
        arr = [_random_value(rnd) for _ in range(rnd.randint(0, 7))]
        text = (rnd.choice(["", "\n ", "\ufeff"]) + json.dumps(arr, ensure_ascii=rnd.random() < 0.5,
                                                              indent=rnd.choice([None, 2])) + "\n").encode()
        block = rnd.choice([1, 2, 3, 7, 64, 1 << 20])
        assert [json.loads(e) for e in iter_elements(io.BytesIO(text), block_bytes=block)] == arr
        pieces = count_elements(io.BytesIO(text), rnd.choice([1, 9, 1 << 20]), block_bytes=block)
        rows = []
        for start, end, n in pieces:
            f = io.BytesIO(text)
            f.seek(start)
            part = list(iter_elements(f, start, end, block_bytes=block))
            assert len(part) == n
            rows += part
        assert [json.loads(r) for r in rows] == arr
        assert pieces[0][0] == 0 and pieces[-1][1] == len(text)


@pytest.mark.parametrize("text,message", [
    (b'[{"a": 1}, {"b": 2}', "ends inside the array"),
    (b'[1, 2]]', "after the array's closing"),
    (b'[1] trailing', "after the array's closing"),
    (b'[{"a": 1}}, 2]', "closes the array"),
    (b'{"a": 1}', "should start with '['"),
])
def test_a_broken_array_is_an_error_with_its_byte_offset(text, message):
    for read in (lambda f: list(iter_elements(f, block_bytes=3)), lambda f: count_elements(f, 1, block_bytes=3)):
        with pytest.raises(JSONArrayError, match=re.escape(message)):
            read(io.BytesIO(text))


def test_empty_slots_are_elements_that_ingest_rejects():
    assert list(iter_elements(io.BytesIO(b"[1,,2,]"))) == [b"1", b"", b"2", b""]
    assert count_elements(io.BytesIO(b"[1,,2,]"), 100)[-1][2] == 4
    assert list(iter_elements(io.BytesIO(b"[ \n ]"))) == [] and count_elements(io.BytesIO(b"[ ]"), 9)[0][2] == 0


# ---------------------------------------------------------------------------- files and compression
def _write_compressed(path: Path, data: bytes, codec: str) -> None:
    if codec == "gzip":
        path.write_bytes(gzip.compress(data))
    elif codec == "zstd":
        with pa.CompressedOutputStream(pa.OSFile(str(path), "wb"), "zstd") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("codec", [None, "gzip", "zstd"])
@pytest.mark.parametrize("shape", ["jsonl", "array"])
def test_jsonl_and_arrays_plain_or_compressed_give_the_same_rows(tmp_path, codec, shape):
    objs = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "q" * i}]} for i in range(40)]
    if shape == "jsonl":
        data = b"\n".join(json.dumps(o).encode() for o in objs) + b"\n\n"
    else:
        data = json.dumps(objs, indent=1).encode()
    path = tmp_path / f"m.{shape}"
    _write_compressed(path, data, codec)
    assert manifest_format(path) == shape
    chunks = manifest_chunks("s", path, chunk_bytes=100)
    assert len(chunks) == 1 if codec else len(chunks) > 1  # a compressed stream is read by one task
    rows = [r for c in chunks for r in read_lines("s", c["manifest"], c["start"], c["end"], c["first_line"],
                                                   c["format"])]
    assert [json.loads(r["raw"]) for r in rows] == objs
    assert [r["line"] for r in rows] == list(range(1, 41))  # lines of the JSONL, elements of the array
    assert sum(c["lines"] for c in chunks) == 40 + (1 if shape == "jsonl" else 0)  # newlines / elements


@pytest.mark.parametrize("content,hint", [
    (b"id,question\n1,hello\n", "it begins with"),
    (b"\x00\x01binary", "it begins with"),
    (b'{\n  "coco": {"root": "x/", "annotation": "a.jsonl"}\n}\n', "InternVL meta file"),
    (b'{\n  "data": [1, 2]\n}\n', "one JSON object spread over several lines"),
    (b"BZh91AY&SY", "bzip2"),
])
def test_a_file_that_is_no_manifest_is_one_user_error_before_the_run(tmp_path, content, hint):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    src = SourceConfig(name="mine", manifests=[str(path)])
    with pytest.raises(UserError, match=hint) as e:
        check_manifests([src], tmp_path)
    assert "source 'mine'" in str(e.value)


def test_parquet_media_bytes_travel_beside_the_json_not_in_it(tmp_path):
    img = _png(1)
    table = pa.table({
        "id": ["p0"],
        "image": [{"bytes": img, "path": "cat.png"}],
        "audio": [{"array": [0.0, 0.5, -0.5, 0.25] * 100, "sampling_rate": 8000}],
        "conversations": [[{"from": "human", "value": "<image><audio> What?"}, {"from": "gpt", "value": "A."}]],
    })
    path = tmp_path / "hf.parquet"
    pq.write_table(table, path)
    (row,) = read_lines("s", path)
    obj = json.loads(row["raw"])
    assert obj["image"] == {"bytes": {"$blob": 0}, "path": "cat.png"} and row["blobs"][0] == img
    assert obj["audio"]["bytes"] == {"$blob": 1} and "array" not in obj["audio"]  # decoded audio became a WAV
    with wave.open(io.BytesIO(row["blobs"][1])) as w:
        assert w.getframerate() == 8000 and w.getnframes() == 400
    assert len(row["raw"]) < 400


# ---------------------------------------------------------------------------- record shapes
def _ingest(tmp_path, obj, blobs=None, line=3):
    ctx = RunContext(out_dir=str(tmp_path), sources={"s": SourceConfig(name="s", manifests=["m.jsonl"])})
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return IngestStage(IngestConfig(), ctx).parse_row({"source": "s", "manifest": "/d/m.json", "line": line,
                                                       "raw": raw, "blobs": blobs})


def test_openai_messages_with_parts_system_and_a_data_url(tmp_path):
    img = _png(2)
    row = _ingest(tmp_path, {"id": "o1", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(img).decode()}},
            {"type": "text", "text": "What is shown?"},
            {"type": "image", "image": "b.jpg"}]},
        {"role": "assistant", "content": "Noise."}]})
    assert row["reject_reason"] is None and row["modality"] == "multi_image"
    assert row["conversations"] == [{"from": "system", "value": "You are terse."},
                                    {"from": "human", "value": "<image>\nWhat is shown?\n<image>"},
                                    {"from": "gpt", "value": "Noise."}]
    stored, by_ref = row["media"]
    assert Path(stored["path"]).read_bytes() == img and str(tmp_path) in stored["path"]  # in the media store
    assert stored["ref"].startswith("data:image/png;base64 (") and by_ref == {**by_ref, "ref": "b.jpg", "path": None}


def test_llamafactory_columns_and_system(tmp_path):
    row = _ingest(tmp_path, {"messages": [{"role": "user", "content": "<image><image>Compare."},
                                          {"role": "assistant", "content": "Same."}],
                             "images": ["a.png", "b.png"], "system": "Be careful.", "tools": "[]"})
    assert row["reject_reason"] is None
    assert [m["ref"] for m in row["media"]] == ["a.png", "b.png"]
    assert row["conversations"][0] == {"from": "system", "value": "Be careful."}
    assert json.loads(row["meta"])["tools"] == "[]" and "images" not in json.loads(row["meta"])
    # HF-style parts without a value take their media from the column, in order
    row = _ingest(tmp_path, {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": "Q?"}]},
                                          {"role": "assistant", "content": [{"type": "text", "text": "A."}]}],
                             "images": [{"bytes": base64.b64encode(_png(3)).decode(), "path": None}]})
    assert row["reject_reason"] is None and row["conversations"][0]["value"] == "<image>\nQ?"
    assert Path(row["media"][0]["path"]).read_bytes() == _png(3)


def test_sharegpt_and_hf_audio_structs(tmp_path):
    wav = _wav(0.2)
    row = _ingest(tmp_path, {"conversations": [{"from": "human", "value": "<audio>Transcribe."},
                                               {"from": "gpt", "value": "A tone."}],
                             "audio": {"bytes": {"$blob": 0}, "path": "tone.wav"}}, blobs=[wav])
    assert row["reject_reason"] is None and row["modality"] == "audio"
    assert row["media"][0]["ref"] == "tone.wav" and row["media"][0]["path"].endswith(".wav")
    sample = read_sample({"conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "x"}],
                          "audios": [{"array": [0.1, -0.1] * 50, "sampling_rate": 16000}]})
    assert sample.media[0].kind == "audio" and sample.media[0].data[:4] == b"RIFF"


@pytest.mark.parametrize("obj,reason,detail", [
    ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}, {"role": "assistant", "content": "x"}]},
     "malformed_conversations", "message 0 part 0: unknown part type 'hologram'"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "malformed_conversations", "unknown role 'tool'"),
    ({"messages": [{"role": "user", "content": "hi"}], "conversations": []}, "malformed_conversations", "both"),
    ({"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}],
      "images": ["a.png", "b.png"]}, "placeholder_mismatch", "2 image item(s) but 1 <image> placeholder(s)"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}], "image": "a.png",
      "images": ["b.png"]}, "malformed_media", "both 'image' and 'images'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "image"}]},
                   {"role": "assistant", "content": "x"}]}, "malformed_media", "use one or the other"),
    ({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
      "image": {"bytes": None, "path": None}}, "malformed_media", "neither bytes nor a path"),
    ({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
      "image": "data:image/png,notbase64"}, "malformed_media", "must be base64"),
])
def test_bad_shapes_are_rejected_with_a_reason(tmp_path, obj, reason, detail):
    row = _ingest(tmp_path, obj, line=17)
    assert (row["reject_reason"], row["line"]) == (reason, 17) and detail in row["reject_detail"]


# ---------------------------------------------------------------------------- InternVL meta files
def test_meta_file_entries_become_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = {"coco": {"root": "media/coco/", "annotation": "ann/coco.jsonl", "data_augment": True,
                     "max_dynamic_patch": 6, "repeat_time": 2, "length": 10, "min_dynamic_patch": 1},
            "doc vqa": {"root": "", "annotation": "ann/doc.json", "repeat_time": 0.5}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "r.yaml").write_text("name: r\nsources:\n  - {name: other, manifests: [x.jsonl]}\n"
                                     "source_defaults: {domain: documents}\n")
    rec = load_recipe(tmp_path / "r.yaml", meta="meta.json")
    coco, doc = rec.sources
    assert (coco.name, coco.manifests, coco.media_root, coco.n_max, coco.augment, coco.repeat, coco.expect_rows) \
        == ("coco", ["ann/coco.jsonl"], str(tmp_path / "media/coco"), 6, True, 2.0, 10)
    assert (doc.name, doc.repeat, doc.media_root, doc.domain) == ("doc-vqa", 0.5, None, "documents")
    assert rec.sources_from is None  # the run folder's recipe.yaml lists the sources themselves
    both = load_recipe(tmp_path / "r.yaml", [f"sources_from={tmp_path / 'meta.json'}"])
    assert [s.name for s in both.sources] == ["other", "coco", "doc-vqa"]
    assert [s["name"] for s in sources_from_meta(str(tmp_path / "meta.json"))] == ["coco", "doc-vqa"]


def test_no_row_kept_stops_with_the_top_reasons(tmp_path):
    from curate.layout import RunLayout

    layout = RunLayout(tmp_path)
    layout.rejects_dir.mkdir(parents=True)
    pq.write_table(pa.table({"manifest": ["/d/llava.json"] * 3, "line": [1, 2, 3],
                             "reject_reason": ["invalid_json", "invalid_json", "missing_conversations"],
                             "reject_detail": ["Expecting value at column 1", "x", "no 'conversations' field"]}),
                   layout.rejects("ingest"))
    marker = {"rows": 3, "kept": 0, "rejected": {"invalid_json": 2, "missing_conversations": 1}}
    with pytest.raises(UserError) as e:
        stop_if_nothing_ingested(layout, marker)
    assert "kept none of the 3" in str(e.value)
    assert "invalid_json x2 (e.g. llava.json:1: Expecting value at column 1); missing_conversations x1" \
        in str(e.value)
    stop_if_nothing_ingested(layout, {"rows": 3, "kept": 1})  # one row is enough to go on
