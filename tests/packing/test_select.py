"""Select: over-budget samples are split at turn boundaries, truncated, or rejected with sizes
(packing.select says why a row cannot fit; the pack_select stage makes the reject)."""

from __future__ import annotations

import pytest

from curate.demo import build_tokenizer, prose_topics
from curate.stages.pack_select import select_or_reject
from curate.stages.tokenize import IGNORE, IMG_END, IMG_START, ChatEncoder, load_tokenizer
from packing.select import SelectCounts, Unfit, select_row


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    tok_dir = build_tokenizer(tmp_path_factory.mktemp("tok"), [b for _, b in prose_topics(30)], vocab_size=800)
    return ChatEncoder(load_tokenizer(str(tok_dir)), 16, 50, 3, system_prompt="You are helpful.")


def record(encoder, turns, media=()):
    row = {"id": "r1", "orig_id": "conv-7", "source": "s", "origin": "manifest",
           "conversations": [{"from": f, "value": v} for f, v in turns],
           "media": list(media), "reject_reason": None}
    ids, labels, tiles, audio, turn_starts, media_spans = encoder.encode(row)
    row.update(input_ids=ids, labels=labels, n_tokens=len(ids), n_tiles=tiles, n_audio_tokens=audio,
               n_response_tokens=sum(lab != IGNORE for lab in labels), turn_starts=turn_starts,
               media_spans=media_spans)
    return row


def image(tiles):
    return {"kind": "image", "tiles": tiles, "frames": None, "duration": None, "ref": f"img{tiles}.jpg"}


def spans_are_whole(row, encoder):
    """Every media item's tokens sit complete in the part: <img> ... </img> pairs balance."""
    start, end = encoder.ids[IMG_START], encoder.ids[IMG_END]
    ids = row["input_ids"]
    return ids.count(start) == ids.count(end) == sum(1 for m in row["media"] if m["kind"] == "image")


def test_fitting_rows_pass_untouched(encoder):
    row = record(encoder, [("human", "hi"), ("gpt", "hello")])
    counts = SelectCounts()
    assert select_row(row, 4096, 8, counts=counts) == [row]
    assert counts.over_budget == 0


def test_split_at_turn_boundaries_keeps_media_whole(encoder):
    turns = []
    media = []
    for k in range(6):
        turns += [("human", f"<image>\nQuestion number {k} about the picture?"), ("gpt", f"Answer number {k}. " * 3)]
        media.append(image(2))
    row = record(encoder, turns, media)
    budget = row["n_tokens"] // 2 + 10
    counts = SelectCounts()
    parts = select_row(row, budget, 12, counts=counts)
    assert len(parts) >= 2 and counts.split == 1 and counts.parts_added == len(parts) - 1
    assert [p["id"] for p in parts] == ["r1"] + [f"r1#{k}" for k in range(1, len(parts))]
    assert [p["orig_id"] for p in parts] == ["conv-7"] + [f"conv-7#{k}" for k in range(1, len(parts))]
    assert parts[0]["origin"] == "manifest" and all(p["origin"] == "synthesized:pack" for p in parts[1:])
    prefix = row["turn_starts"][0]
    for p in parts:
        assert p["n_tokens"] == len(p["input_ids"]) <= budget and p["n_tiles"] <= 12
        assert p["input_ids"][:prefix] == row["input_ids"][:prefix]  # system prefix repeated
        assert p["n_response_tokens"] > 0
        assert spans_are_whole(p, encoder)
        assert len(p["conversations"]) == len(p["turn_starts"])
        # the part's offsets point at the same turn headers as in the original
        for t in p["turn_starts"]:
            assert p["input_ids"][t] == row["input_ids"][row["turn_starts"][0]]
    # every round lands in exactly one part, in order
    assert sum(len(p["conversations"]) for p in parts) == len(row["conversations"])
    assert sum(len(p["media"]) for p in parts) == 6
    assert [m["ref"] for p in parts for m in p["media"]] == [m["ref"] for m in media]


def test_split_on_the_tile_budget(encoder):
    turns, media = [], []
    for k in range(4):
        turns += [("human", "<image>\nDescribe."), ("gpt", "A picture.")]
        media.append(image(6))
    row = record(encoder, turns, media)
    assert row["n_tiles"] == 24
    parts = select_row(row, 100_000, 12)
    assert [p["n_tiles"] for p in parts] == [12, 12]


def test_single_long_round_is_rejected_or_truncated(encoder):
    row = record(encoder, [("human", "Tell me everything."), ("gpt", "word " * 400)])
    budget = row["n_tokens"] // 2
    counts = SelectCounts()
    with pytest.raises(Unfit, match="truncate") as unfit:
        select_row(dict(row), budget, 4, split=True, truncate=False, counts=counts)
    assert unfit.value.reason == "too_long" and counts.rejected == 1
    counts = SelectCounts()
    [rejected] = select_or_reject(dict(row), budget, 4, split=True, truncate=False, counts=counts)
    assert rejected["reject_reason"] == "too_long" and "truncate" in rejected["reject_detail"]
    assert rejected["reject_stage"] == "pack" and rejected["id"] == row["id"] and row["reject_reason"] is None
    assert counts.rejected == 1
    counts = SelectCounts()
    [cut] = select_row(dict(row), budget, 4, truncate=True, counts=counts)
    assert cut["n_tokens"] == budget and cut["reject_reason"] is None and counts.truncated == 1
    assert cut["input_ids"] == row["input_ids"][:budget]


def test_truncation_never_cuts_inside_an_image(encoder):
    row = record(encoder, [("human", "Look."), ("gpt", "Sure. " * 20 + "<image>" + " More." * 5)], [image(4)])
    s, e = row["media_spans"]
    [cut] = select_row(dict(row), s + 5, 8, truncate=True)  # the budget ends inside the image span
    assert cut["n_tokens"] == s and cut["media"] == [] and cut["n_tiles"] == 0


def test_part_without_answer_is_dropped(encoder):
    # the question alone is over the budget: truncating it leaves nothing to learn
    row = record(encoder, [("human", "why " * 300), ("gpt", "because")])
    [rej] = select_or_reject(dict(row), 100, 4, truncate=True)
    assert rej["reject_reason"] == "too_long" and "trainable" in rej["reject_detail"]
