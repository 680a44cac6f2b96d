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


# ---------------------------------------------------------------------------- whole runs
def _turns(q: str, a: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"from": "system", "value": system}] if system else []) + [{"from": "human", "value": q},
                                                                       {"from": "gpt", "value": a}]


def build_formats(root: Path) -> tuple[dict, dict, dict]:
    """One manifest of each format; returns (sources, kept {orig_id: (answer, system, media)},
    rejected {orig_id or file:position: (reason, line)})."""
    rnd = random.Random(3)
    img_dir = root / "images"
    img_dir.mkdir()
    seed = iter(range(100))

    def image(name: str, folder: Path = img_dir) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_png(next(seed)))
        return name

    kept, rejected = {}, {}

    def sample(oid, q, media=0, system=None):
        a = _text(rnd)
        kept[oid] = (a, system, media)
        return q + " " + _text(rnd, 8), a

    # LLaVA: a JSON array (indented), images beside it, one element not JSON, one with no turns
    elements = []
    for i in range(3):
        q, a = sample(f"llava-{i}", "<image>\n", 1)
        elements.append(json.dumps({"id": f"llava-{i}", "image": f"images/{image(f'l{i}.png')}",
                                    "conversations": _turns(q, a)}, indent=2))
    elements.insert(1, '{"id": "llava-broken", "image": tru}')
    elements.append(json.dumps({"id": "llava-empty", "conversations": []}))
    rejected["llava-broken"] = ("invalid_json", 2)
    rejected["llava-empty"] = ("malformed_conversations", 5)
    (root / "llava.json").write_text("[\n" + ",\n".join(elements) + "\n]\n")
    # ShareGPT: a JSON array of text chats, a system turn or a system column, gzip-compressed
    q0, a0 = sample("sg-0", "Tell me.", system="You answer in one sentence.")
    q1, a1 = sample("sg-1", "Explain.", system="You are a careful assistant.")
    share = [{"id": "sg-0", "conversations": _turns(q0, a0, "You answer in one sentence.")},
             {"id": "sg-1", "system": "You are a careful assistant.", "conversations": _turns(q1, a1)}]
    (root / "sharegpt.json.gz").write_bytes(gzip.compress(json.dumps(share).encode()))
    # OpenAI messages with image parts (a path and a data: URL), a bad part type
    lines = []
    for i in range(2):
        q, a = sample(f"oa-{i}", "Describe.", 1, system="Look closely." if i else None)
        part = ({"type": "image", "image": f"images/{image(f'o{i}.png')}"} if i == 0 else
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                    + base64.b64encode(_png(next(seed))).decode()}})
        msgs = ([{"role": "system", "content": "Look closely."}] if i else []) + [
            {"role": "user", "content": [part, {"type": "text", "text": q}]},
            {"role": "assistant", "content": [{"type": "text", "text": a}]}]
        lines.append(json.dumps({"id": f"oa-{i}", "messages": msgs}))
    lines.append(json.dumps({"id": "oa-bad", "messages": [{"role": "user", "content": [{"type": "poem"}]}]}))
    rejected["oa-bad"] = ("malformed_conversations", 3)
    (root / "openai.jsonl").write_text("\n".join(lines) + "\n")
    # LLaMA-Factory: an `images` column, <image> placeholders in the text; one with too few placeholders
    q, a = sample("lf-0", "<image><image>Which is brighter?", 2)
    rows = [{"id": "lf-0", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "images": [f"images/{image('f0.png')}", f"images/{image('f1.png')}"]},
            {"id": "lf-bad", "messages": [{"role": "user", "content": "<image>One?"},
                                          {"role": "assistant", "content": "Two."}],
             "images": ["images/f0.png", "images/f1.png"]}]
    rejected["lf-bad"] = ("placeholder_mismatch", 2)
    (root / "llamafactory.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # Hugging Face Parquet: image bytes, audio bytes and decoded audio; one image that is no image
    q_img, a_img = sample("hf-img", "<image>\nWhat texture?", 1)
    q_wav, a_wav = sample("hf-wav", "<audio>\nWhat pitch?", 1)
    q_arr, a_arr = sample("hf-arr", "<audio>\nHow long?", 1)
    tone = 0.3 * np.sin(2 * np.pi * 330 * np.arange(16000) / 16000)
    table = pa.table({
        "id": ["hf-img", "hf-wav", "hf-arr", "hf-bad"],
        "image": [{"bytes": _png(next(seed)), "path": "x.png"}, None, None, {"bytes": b"not a png", "path": "y.png"}],
        "audio": [None, {"bytes": _wav(1.0), "path": "a.wav", "array": None, "sampling_rate": None},
                  {"bytes": None, "path": None, "array": tone.tolist(), "sampling_rate": 16000}, None],
        "conversations": [_turns(q_img, a_img), _turns(q_wav, a_wav), _turns(q_arr, a_arr),
                          _turns("<image>\nAnd this?", "Nothing.")]})
    pq.write_table(table, root / "hf.parquet")
    rejected["hf-bad"] = ("broken_image", 4)
    # InternVL meta file: two annotation files, media under their roots, repeat 2 and 0.5
    meta = {}
    for name, repeat, n, fmt in (("vl-a", 2, 2, "jsonl"), ("vl-b", 0.5, 4, "json")):
        media_root = root / "roots" / name
        objs = []
        for i in range(n):
            q, a = sample(f"{name}-{i}", "<image>\nWhat is it?", 1)
            objs.append({"id": f"{name}-{i}", "image": image(f"{name}{i}.png", media_root),
                         "conversations": _turns(q, a)})
        ann = root / "ann" / f"{name}.{fmt}"
        ann.parent.mkdir(exist_ok=True)
        ann.write_text("\n".join(json.dumps(o) for o in objs) if fmt == "jsonl" else json.dumps(objs))
        meta[name] = {"root": str(media_root), "annotation": str(ann), "repeat_time": repeat,
                      "max_dynamic_patch": 4, "length": n + (1 if name == "vl-b" else 0)}
    (root / "meta.json").write_text(json.dumps(meta))
    sources = [{"name": n, "manifests": [str(root / f)]} for n, f in (
        ("llava", "llava.json"), ("sharegpt", "sharegpt.json.gz"), ("openai", "openai.jsonl"),
        ("llamafactory", "llamafactory.jsonl"), ("hf", "hf.parquet"))]
    return {"sources": sources, "sources_from": str(root / "meta.json")}, kept, rejected


def _shard_samples(shards: Path):
    """(sample entry of KEY.json, its token ids) for every sample of every shard."""
    import tarfile

    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                meta = json.loads(tar.extractfile(members[name]).read())
                ids = np.load(io.BytesIO(tar.extractfile(members[name[:-5] + ".input_ids.npy"]).read()))
                for s in meta["samples"]:
                    yield s, ids[s["token_offset"]:s["token_offset"] + s["n_tokens"]].tolist()


def _recipe(root: Path, demo: Path, body: dict) -> Path:
    import yaml

    recipe = {"name": "formats", "seed": 5, **body, "stages": {
        "transcribe": {"enabled": False}, "audio_qa": {"enabled": False}, "score": {"enabled": False},
        "tokenize": {"tokenizer": str(demo / "tokenizer")}, "shard": {"max_sequences": 4}}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.pipeline
def test_every_format_reaches_the_shards_with_its_media_and_turns(ray_session, demo_small, tmp_path):
    from transformers import AutoTokenizer

    from curate.runner import Runner

    body, kept, rejected = build_formats(tmp_path)
    recipe = load_recipe(_recipe(tmp_path, demo_small, body))
    out = tmp_path / "run"
    stats = Runner(recipe, out).run()
    assert stats["invariant_ok"], stats
    assert stats["samples_in"] == len(kept) + len(rejected)
    from curate.layout import read_marker

    marker = read_marker(next((out / "work").glob("*-ingest")))  # the meta file's `length`, checked
    assert marker["rows_differ_from_length"] == {"vl-b": {"expected": 5, "read": 4}}
    # bad elements: rejected at their position (the JSONL line, the array element, the table row)
    rejects = [r for p in (out / "rejects").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    by_orig = {r["orig_id"]: r for r in rejects}
    for oid, (reason, line) in rejected.items():
        row = by_orig.get(oid) or by_orig.get(f"llava.json:{line}")
        assert row is not None and (row["reject_reason"], row["line"]) == (reason, line), (oid, row)
    # repeat 0.5 draws some of vl-b; everything else kept is in the shards, vl-a twice
    downsampled = {r["orig_id"] for r in rejects if r["reject_reason"] == "not_drawn"}
    assert downsampled and downsampled < {f"vl-b-{i}" for i in range(4)}, downsampled
    contents = {r["orig_id"]: r for r in pq.read_table(out / "shards" / "contents.parquet").to_pylist()}
    assert set(contents) == set(kept) - downsampled
    assert {o: contents[o]["copies"] for o in contents if o.startswith("vl-a")} == {"vl-a-0": 2, "vl-a-1": 2}
    # the shards: each sample's media and turns (its answer, its system prompt) as written
    tok = AutoTokenizer.from_pretrained(str(demo_small / "tokenizer"))
    seen = set()
    for sample, ids in _shard_samples(out / "shards"):
        answer, system, n_media = kept[sample["orig_id"]]
        text = tok.decode(ids)
        assert answer in text and (system is None or system in text), (sample["orig_id"], text[:300])
        assert len(sample["media"]) == n_media, sample
        if sample["orig_id"].startswith("hf-"):  # Parquet bytes became media files of the shard
            assert all(m["member"].endswith(".png" if sample["orig_id"] == "hf-img" else ".flac")
                       for m in sample["media"]), sample
        seen.add(sample["orig_id"])
    assert seen == set(contents)


@pytest.mark.pipeline
def test_a_manifest_of_only_bad_rows_stops_after_ingest_with_exit_2(ray_session, demo_small, tmp_path):
    from click.testing import CliRunner

    from curate.cli import main

    (tmp_path / "bad.json").write_text(json.dumps([{"id": f"b{i}", "conversation": []} for i in range(5)]))
    recipe = _recipe(tmp_path, demo_small, {"sources": [{"name": "bad", "manifests": [str(tmp_path / "bad.json")]}]})
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "ingest kept none of the 5 manifest rows" in result.output
    assert "missing_conversations x5 (e.g. bad.json:1: no 'conversations' field)" in result.output
    assert not list((tmp_path / "run" / "work").glob("01-*"))  # no later stage ran
