import json

from curate.recipe import IngestConfig, SourceConfig
from curate.stages.base import RunContext
from curate.stages.ingest import IngestStage


def stage():
    ctx = RunContext(out_dir="/tmp/x",
                     sources={"s": SourceConfig(name="s", manifests=["m.jsonl"], domain="math")})
    return IngestStage(IngestConfig(), ctx)


def parse(raw):
    if isinstance(raw, dict):
        raw = json.dumps(raw).encode()
    return stage().parse_row({"source": "s", "manifest": "/data/m.jsonl", "line": 3, "raw": raw})


def conv(q="Hi?", a="Hello."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_good_record_is_parsed_with_stable_id():
    row = parse({"id": 7, "conversations": conv()})
    assert row["reject_reason"] is None and row["modality"] == "text" and row["domain"] == "math"
    assert row["id"] == parse({"id": 7, "conversations": conv("other")})["id"]
    assert row["id"] != parse({"id": 8, "conversations": conv()})["id"]
    assert json.loads(row["meta"])["orig_id"] == 7


def test_single_image_without_placeholder_gets_one_prepended():
    row = parse({"image": "a.jpg", "conversations": conv("What is this?")})
    assert row["reject_reason"] is None and row["modality"] == "image"
    assert row["conversations"][0]["value"] == "<image>\nWhat is this?"
    assert row["media"][0]["kind"] == "image" and row["media"][0]["ref"] == "a.jpg"


def test_aliases_and_modalities():
    row = parse({"image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "user", "value": "<image><image> compare"}, {"from": "assistant", "value": "same"}]})
    assert row["modality"] == "multi_image" and [t["from"] for t in row["conversations"]] == ["human", "gpt"]
    assert parse({"video": "v.mp4", "conversations": conv("<video> what?")})["modality"] == "video"
    assert parse({"audio": "a.wav", "conversations": conv("<audio>")})["modality"] == "audio"
    both = {"audio": "a.wav", "image": "i.jpg", "conversations": conv("<image><audio>")}
    assert parse(both)["modality"] == "interleaved"


def test_bad_lines_become_rejects_with_reasons():
    cases = {
        b'{"conversations": [': "invalid_json",
        b'{"x": "caf\xe9"}': "bad_encoding",
        b"[1, 2]": "invalid_record",
        json.dumps({"id": 1}).encode(): "missing_conversations",
        json.dumps({"conversations": []}).encode(): "malformed_conversations",
        json.dumps({"conversations": [{"speaker": "h", "text": "x"}]}).encode(): "malformed_conversations",
        json.dumps({"conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]}).encode():
            "malformed_conversations",
        json.dumps({"conversations": [{"from": "human", "value": "only a question"}]}).encode():
            "malformed_conversations",
        json.dumps({"image": ["a.jpg", "b.jpg"], "conversations": conv("<image> one tag")}).encode():
            "placeholder_mismatch",
        json.dumps({"conversations": conv("<video> no video")}).encode(): "placeholder_mismatch",
        json.dumps({"image": 5, "conversations": conv()}).encode(): "malformed_media",
    }
    for raw, reason in cases.items():
        row = parse(raw)
        assert row["reject_reason"] == reason, (raw, row["reject_reason"], row["reject_detail"])
        assert row["reject_stage"] == "ingest" and row["reject_detail"]
        assert row["source"] == "s" and row["line"] == 3 and row["id"]


def test_oversized_line_is_rejected():
    st = stage()
    st.config = IngestConfig(max_line_bytes=1024)
    row = st.parse_row({"source": "s", "manifest": "m", "line": 1, "raw": b"{" + b" " * 2000 + b"}"})
    assert row["reject_reason"] == "line_too_long"


def test_orig_id_is_the_manifest_id_or_file_and_line():
    assert parse({"id": "img-0", "conversations": conv()})["orig_id"] == "img-0"
    assert parse({"conversations": conv()})["orig_id"] == "m.jsonl:3"
    broken = parse(b'{"id": "cut-7", "conversations": [')  # not JSON, but the user can still find it
    assert broken["reject_reason"] == "invalid_json" and broken["orig_id"] == "cut-7"
    assert parse(b"\xff\xfe")["orig_id"] == "m.jsonl:3"
