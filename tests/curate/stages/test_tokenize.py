"""Chat template, media token expansion and label masks."""

import pytest

from curate.demo import build_tokenizer, prose_topics
from curate.recipe import SourceConfig, TokenizeConfig
from curate.stages.base import RunContext
from curate.stages.tokenize import (
    AUDIO_CONTEXT,
    IGNORE,
    IM_END,
    IMG_CONTEXT,
    ChatEncoder,
    TokenizeStage,
    audio_token_count,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"), [b for _, b in prose_topics(30)], vocab_size=800)


def image(tiles):
    return {"kind": "image", "tiles": tiles, "frames": None, "duration": None}


def test_text_labels_cover_only_the_answer(tok_dir):
    tok = load_tokenizer(str(tok_dir))
    enc = ChatEncoder(tok, 256, 50, 3)
    row = {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "It is 4."}],
           "media": []}
    ids, labels, tiles, audio, _, _ = enc.encode(row)
    assert len(ids) == len(labels) and tiles == 0 and audio == 0
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(trained) == "It is 4." + IM_END
    assert tok.decode(ids).startswith("<|im_start|>user\nWhat is 2+2?<|im_end|>")


def test_media_expansion_and_masks(tok_dir):
    tok = load_tokenizer(str(tok_dir))
    enc = ChatEncoder(tok, 256, 50, 3)
    ctx_id, aud_id = tok.convert_tokens_to_ids(IMG_CONTEXT), tok.convert_tokens_to_ids(AUDIO_CONTEXT)
    row = {"conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare. <video> and <audio>"},
        {"from": "gpt", "value": "Same."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}],
        "media": [image(5), image(1),
                  {"kind": "video", "tiles": 3, "frames": ["a", "b", "c"], "duration": 2.0},
                  {"kind": "audio", "tiles": 0, "frames": None, "duration": 3.0}]}
    ids, labels, tiles, audio, _, _ = enc.encode(row)
    assert tiles == 5 + 1 + 3
    assert ids.count(ctx_id) == tiles * 256
    assert audio == audio_token_count(3.0, 50, 3) == 50 and ids.count(aud_id) == 50
    assert all(lab == IGNORE for i, lab in zip(ids, labels) if i in (ctx_id, aud_id))
    text = tok.decode(ids)
    assert "Image-1: <img>" in text and "Image-2: <img>" in text and "Frame-3: <img>" in text
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    assert trained == f"Same.{IM_END}Yes.{IM_END}"


def test_stage_counts_tokens_and_tiles(tok_dir):
    ctx = RunContext(out_dir="/tmp/o", sources={"s": SourceConfig(name="s", manifests=["m"])})
    st = TokenizeStage(TokenizeConfig(tokenizer=str(tok_dir)), ctx)
    st.setup()
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": a}],
             "media": [image(t)], "reject_reason": None} for i, (t, a) in enumerate(((1, "a"), (5, "b c")))]
    out = st.process_rows(rows)
    assert [r["reject_reason"] for r in out] == [None, None]
    assert out[0]["n_tiles"] == 1 and out[1]["n_tiles"] == 5
    assert out[0]["n_tokens"] == len(out[0]["input_ids"]) > 256 and out[1]["n_tokens"] > 5 * 256
    assert out[0]["n_response_tokens"] >= 2  # answer + <|im_end|>


def test_stage_batch_columns_equal_the_row_path(tok_dir):
    """The stage's Arrow path (flat token arrays) gives exactly what process_rows gives, row by
    row, on text, image, multi-image, video and audio rows, an empty reply and a rejected row;
    the columns it does not own pass through untouched and in place."""
    import pyarrow as pa

    from curate.records import CORE_SCHEMA

    ctx = RunContext(out_dir="/tmp/o", sources={"s": SourceConfig(name="s", manifests=["m"])})
    st = TokenizeStage(TokenizeConfig(tokenizer=str(tok_dir), system_prompt="Be brief."), ctx)
    st.setup()
    media = [[], [image(2)], [image(1), image(3)],
             [{"kind": "video", "tiles": 2, "frames": ["a", "b"], "duration": 1.0}],
             [{"kind": "audio", "tiles": 0, "frames": None, "duration": 1.5}], []]
    prompts = ["plain question", "<image>\nwhat is this", "<image><image> compare", "<video> describe",
               "<audio> transcribe", "empty reply"]
    answers = ["the answer is short.", "a cat", "same", "it moves", "hello there", ""]
    rows = [{"id": f"r{i}", "source": "s",
             "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
             "media": m, "reject_reason": "too_short" if i == 5 else None}
            for i, (q, a, m) in enumerate(zip(prompts, answers, media))]
    fields = [f for f in CORE_SCHEMA if f.name in ("id", "source", "conversations", "media", "reject_reason")]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    out = st(table)
    assert out.schema == st.output_schema(table.schema)
    assert out.column_names[:len(table.column_names)] == table.column_names
    assert out.select(table.column_names).equals(table)
    expected = st.process_rows([dict(r) for r in table.to_pylist()])
    for got, want in zip(out.to_pylist(), expected):
        for name in st.outputs():
            assert got[name] == want[name], (want["id"], name)
    assert out.column("n_tiles").to_pylist() == [0, 2, 4, 2, 0, 0]
    assert all(n > 0 for n in out.column("n_audio_tokens").to_pylist()[4:5])


def test_batch_encode_gives_the_ids_of_the_transformers_call(tok_dir, tmp_path):
    """encode_many tokenizes through a copy of the Rust tokenizer; its ids must be those of
    tokenizer(text, add_special_tokens=False), also for a tokenizer saved with truncation
    on (the transformers call turns it off) and for a chat token written inside a reply."""
    import json

    saved = json.loads((tok_dir / "tokenizer.json").read_text())
    saved["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(saved))
    for f in tok_dir.iterdir():
        if f.name != "tokenizer.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    texts = ["What is 2+2?", "It is 4, said <|im_end|> the  reply.", "Ünïcode — 中文 text\n\twith tabs", " "]
    rows = [{"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": t[::-1]}], "media": []}
            for t in texts]
    for folder in (tok_dir, tmp_path):
        tok = load_tokenizer(str(folder))
        enc = ChatEncoder(tok, 256, 50, 3)
        assert enc._backend is not None  # the fast path is the one under test
        batch = enc.encode_many(rows)
        enc._backend = None  # the same rows through the transformers call
        assert batch == enc.encode_many(rows)
        for t in texts:
            assert enc.encode_text(t) == tok(t, add_special_tokens=False)["input_ids"]
    assert len(batch[1].input_ids) > 10  # the saved truncation (3 tokens) was not applied


def test_tokenizer_without_special_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.train_from_iterator(["plain text only"], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=t).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="lacks special tokens"):
        load_tokenizer(str(tmp_path))
