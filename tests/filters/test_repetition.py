"""is_repetitive on a labelled set built here from real prose, code and licence texts.

Positives: clean chunks with repetition injected in each of the forms the papers show
(a sentence looping at the end, two statements alternating, a run of one token, one line
many times, n-grams with "....." separators, a clause looping in the middle, a character
loop). Negatives: the clean chunks themselves plus hard negatives that a naive detector
flags (numbered lists, code with similar lines, tables, legal text repeating a phrase or
sentence twice). Precision and recall must both be >= 0.97.
"""

from __future__ import annotations

import inspect
import random
import re
from pathlib import Path

import pytest

from filters.repetition import Thresholds, fired, is_repetitive, repetition_score, repetition_signals

LICENSES = Path("/usr/share/common-licenses")
CHUNK = 2000


def prose_chunks() -> list[str]:
    """~2 KB chunks of pydoc topics and licence texts, cut at paragraph boundaries."""
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    for name in ("GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "Artistic", "GFDL-1.3", "BSD", "CC0-1.0"):
        if (LICENSES / name).exists():
            docs.append((LICENSES / name).read_text(errors="replace"))
    chunks = []
    for doc in docs:
        paras, cur = re.split(r"\n\s*\n", doc), ""
        for para in paras:
            if len(cur) + len(para) > CHUNK and len(cur) > 600:
                chunks.append(cur.strip())
                cur = ""
            cur += para + "\n\n"
        if len(cur) > 600:
            chunks.append(cur.strip())
    return chunks


def sentences_of(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.!?])\s+", flat) if 25 <= len(s) <= 200 and s[0].isupper()]


CODE_MODULES = ["argparse", "ast", "calendar", "collections", "colorsys", "csv", "dataclasses", "decimal",
                "email.message", "enum", "fractions", "html.entities", "http.client", "inspect", "json.decoder",
                "json.encoder", "logging", "pathlib", "random", "re", "statistics", "string", "textwrap", "token",
                "tokenize", "typing", "unittest.case"]


def code_chunks() -> list[str]:
    """Real code from the standard library: similar lines, repeated keywords, tables of constants."""
    import importlib

    out = []
    for name in CODE_MODULES:
        src = inspect.getsource(importlib.import_module(name))
        out += [src[i:i + CHUNK] for i in range(0, min(len(src), 12 * CHUNK), CHUNK)]
    return out


# ------------------------------------------------------------------------------ positives
def inject(kind: str, base: str, sents: list[str], rng: random.Random) -> str:
    head = base[: rng.randint(300, 1400)]
    s1, s2 = rng.sample(sents, 2)
    clause = " ".join(s1.split()[: rng.randint(3, 8)])
    if kind == "tail_sentence":
        return head + " " + " ".join([s1] * rng.randint(4, 12))
    if kind == "tail_clause":
        return head + " " + ", ".join([clause] * rng.randint(6, 15)) + "."
    if kind == "alternating":
        return head + " " + " ".join([s1, s2] * rng.randint(3, 8))
    if kind == "token_run":
        word = rng.choice(["the", "and", "yes", "0", "very", "data", "<unk>"])
        pos = rng.randint(100, len(head))
        return head[:pos] + " " + " ".join([word] * rng.randint(25, 60)) + " " + head[pos:]
    if kind == "same_line":
        return head + "\n" + "\n".join([s1] * rng.randint(5, 12))
    if kind == "dotted_ngrams":
        return head + " " + " ..... ".join([clause] * rng.randint(6, 14))
    if kind == "middle_loop":
        pos = head.rfind(". ", 0, len(head) // 2) + 2
        return head[:pos] + " ".join([s1] * rng.randint(5, 9)) + " " + base[pos:pos + 600]
    if kind == "numbered_loop":  # a list whose items are all the same statement
        return head + "\n" + "\n".join(f"{i + 1}. {s1}" for i in range(rng.randint(5, 12)))
    if kind == "char_loop":
        unit = rng.choice(["ha", "0", "ab", "!a", "la"])
        return head + " " + unit * rng.randint(-(-26 // len(unit)), 60)
    raise ValueError(kind)


POSITIVE_KINDS = ["tail_sentence", "tail_clause", "alternating", "token_run", "same_line", "dotted_ngrams",
                  "middle_loop", "numbered_loop", "char_loop"]


# ------------------------------------------------------------------------------ hard negatives
def numbered_list(sents: list[str], rng: random.Random) -> str:
    items = rng.sample(sents, rng.randint(6, 14))
    return "Follow these steps:\n" + "\n".join(f"{i + 1}. {s}" for i, s in enumerate(items))


def similar_code(rng: random.Random) -> str:
    names = rng.sample(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
                        "lam", "mu", "nu", "xi", "omicron", "pi"], 12)
    lines = ["import unittest", "", "class TestParse(unittest.TestCase):", "    def test_values(self):"]
    lines += [f"        self.assertEqual(parse('{n}'), {rng.randint(0, 999)})" for n in names]
    lines += ["", "    def test_config(self):"]
    lines += [f"        config.{n} = settings.get('{n}', {rng.randint(0, 9)})" for n in names[:8]]
    return "\n".join(lines)


def table(rng: random.Random) -> str:
    rows = ["| dataset | split | samples | tokens | ratio |", "| --- | --- | --- | --- | --- |"]
    for name in rng.sample(["coco", "vqa", "docvqa", "chartqa", "ocrbench", "textvqa", "gqa", "ai2d",
                            "scienceqa", "mmmu", "mathvista", "infovqa"], 10):
        for split in ("train", "val"):
            rows.append(f"| {name} | {split} | {rng.randint(1000, 99999)} | {rng.randint(10**5, 10**7)} | "
                        f"{rng.random():.2f} |")
    return "\n".join(rows)


def json_records(rng: random.Random) -> str:
    """Structured output: the same keys in every record, different values."""
    import json

    words = ["chart", "table", "figure", "page", "scan", "photo", "diagram", "map", "plot", "slide"]
    recs = [{"name": rng.choice(words) + str(i), "width": rng.randint(100, 4000), "height": rng.randint(100, 4000),
             "label": rng.choice(words), "score": round(rng.random(), 3)} for i in range(12)]
    return "Here are the detected objects:\n" + json.dumps(recs, indent=1)


def legal_twice(base: str, sents: list[str], rng: random.Random) -> str:
    s = rng.choice(sents)
    return (base[:1200] + "\n\n" + s + " Notwithstanding the foregoing, " + s[0].lower() + s[1:]
            + " " + "Subject to the terms and conditions of this License, and subject to the terms and "
            "conditions of any separate agreement, the Licensor grants You a licence.")


def sentence_twice(base: str, sents: list[str], rng: random.Random) -> str:
    s = rng.choice(sents)
    return base[:1500] + " " + s + " " + s


def labelled_set(seed: int = 0) -> list[tuple[str, str, bool]]:
    """(kind, text, is_repetitive) triples."""
    rng = random.Random(seed)
    chunks = prose_chunks()
    sents = [s for c in chunks for s in sentences_of(c)]
    code = code_chunks()
    data: list[tuple[str, str, bool]] = [("clean_prose", c, False) for c in chunks]
    data += [("code", c, False) for c in code]
    for i in range(25):
        data.append(("numbered_list", numbered_list(sents, rng), False))
        data.append(("similar_code", similar_code(rng), False))
        data.append(("table", table(rng), False))
        data.append(("json_records", json_records(rng), False))
        data.append(("legal_twice", legal_twice(rng.choice(chunks), sents, rng), False))
        data.append(("sentence_twice", sentence_twice(rng.choice(chunks), sents, rng), False))
    for kind in POSITIVE_KINDS:
        for base in rng.sample(chunks, 30):
            data.append((kind, inject(kind, base, sents, rng), True))
    return data


def evaluate(data):
    tp = fp = fn = tn = 0
    errors = []
    for kind, text, label in data:
        pred = is_repetitive(text)
        tp += pred and label
        fp += pred and not label
        fn += (not pred) and label
        tn += (not pred) and not label
        if pred != label:
            errors.append((kind, label, text))
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return precision, recall, (tp, fp, fn, tn), errors


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def data():
    return labelled_set()


def test_precision_and_recall_on_the_labelled_set(data):
    precision, recall, (tp, fp, fn, tn), errors = evaluate(data)
    kinds = sorted({k for k, _, _ in data})
    print(f"\nlabelled set: {len(data)} texts ({tp + fn} repetitive), kinds: {kinds}")
    print(f"precision={precision:.4f} recall={recall:.4f} tp={tp} fp={fp} fn={fn} tn={tn}")
    for kind, label, text in errors[:10]:
        print(f"  miss {kind} label={label}: {repetition_signals(text)}")
    assert tp + fn >= 200 and fp + tn >= 300
    assert precision >= 0.97 and recall >= 0.97


@pytest.mark.parametrize("kind", POSITIVE_KINDS)
def test_every_injected_kind_is_mostly_caught(data, kind):
    hits = [is_repetitive(t) for k, t, _ in data if k == kind]
    assert sum(hits) / len(hits) >= 0.9, kind


@pytest.mark.parametrize("kind", ["numbered_list", "similar_code", "table", "json_records", "legal_twice",
                                  "sentence_twice", "code"])
def test_hard_negatives_are_mostly_kept(data, kind):
    hits = [is_repetitive(t) for k, t, _ in data if k == kind]
    assert sum(hits) / len(hits) <= 0.05, kind


def test_score_range_and_order():
    clean = prose_chunks()[5]
    sentence = sentences_of(clean)[0]
    scores = [repetition_score(clean + (" " + sentence) * k) for k in (0, 2, 4, 8, 16)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores) and scores[0] < 0.5 <= scores[2] and scores[-1] == 1.0
    assert repetition_score("") == 0.0 and not is_repetitive("Yes.")


def test_named_signals_fire_for_their_pattern():
    base = prose_chunks()[3][:800]
    assert "tail_units" in fired(repetition_signals(base + " It is done." * 6))
    assert "dup_line_ratio" in fired(repetition_signals("\n".join(["The same line is here again."] * 6)))
    numbered = base + "\n" + "\n".join(f"{i}. Check the cable." for i in range(1, 6))
    assert fired(repetition_signals(numbered)) == ["line_run"]
    assert "char_run" in fired(repetition_signals(base + " hahahahahahahahahahahahahaha"))
    assert "periodic_coverage" in fired(repetition_signals(base[:200] + " A holds. B holds." * 20))


def test_long_texts_are_scored_on_head_and_tail():
    from pydoc_data.topics import topics

    book = "\n\n".join(topics[k] for k in sorted(topics))  # ~450 KB of real prose
    assert len(book) > 10 * Thresholds().max_chars and not is_repetitive(book)
    assert is_repetitive(book + " The proof is complete." * 8)
    assert is_repetitive("Now we repeat. " * 40 + book)


def test_thresholds_from_recipe_options():
    t = Thresholds.from_options({"repetition.tail_units": 8, "min_answer_chars": 2})
    assert t.tail_units == 8.0 and t.char_run == Thresholds().char_run
    text = prose_chunks()[2][:800] + " It is done." * 5
    assert is_repetitive(text) and not is_repetitive(text, t)
    with pytest.raises(ValueError, match="repetition.tail_unit"):
        Thresholds.from_options({"repetition.tail_unit": 8})


if __name__ == "__main__":  # print the errors while tuning
    d = labelled_set()
    p, r, counts, errs = evaluate(d)
    print(len(d), p, r, counts)
    for kind, label, text in errs:
        print("----", kind, label, {k: round(v, 3) for k, v in repetition_signals(text).items()})
        print(text[-300:])


# ------------------------------------------------------------------------------ Chinese
ZH_CLEAN = [
    "黄河发源于青藏高原的巴颜喀拉山脉，流经九个省区，最后在山东注入渤海。由于中游穿过黄土高原，"
    "河水携带大量泥沙，下游河床不断抬高，形成了举世闻名的地上河。",
    "做红烧肉时，先把五花肉切成大小均匀的方块，冷水下锅焯去血沫。炒糖色要用小火，糖完全融化并变成"
    "枣红色后再放肉翻炒，然后加入生抽、老抽和热水，小火慢炖一个小时左右。",
    "梯度下降每一步都沿着损失函数下降最快的方向更新参数。学习率太大时，参数会在最优点附近来回震荡；"
    "学习率太小时，收敛又会非常缓慢，所以实践中常常配合学习率预热和余弦退火一起使用。",
    "这张图表展示了某城市过去十二个月的平均气温。一月最冷，平均只有零下三度；七月最热，接近二十九度。"
    "春秋两季的气温变化较快，相邻两个月之间可以相差六到七度。",
    "我们在 PyTorch 中用 DataLoader 读取数据，把 batch_size 设为 32，并打开 shuffle。"
    "每个训练周期结束后，在验证集上计算准确率，如果连续三个周期没有提升就提前停止训练。",
    "宋代的活字印刷由毕昇发明，他用胶泥刻字，每字一印，用火烧硬后排版印刷。印完之后可以把字拆下来"
    "重复使用，这比雕版印刷节省了大量的时间和材料。",
]


def zh_loops() -> dict[str, str]:
    base = ZH_CLEAN[0]
    return {
        "tail_sentence": base + "河水携带大量泥沙。" * 8,
        "phrase_without_punctuation": base[:40] + "我们需要进一步分析这个问题" * 6,
        "alternating": base + "学习率太大会震荡。学习率太小会很慢。" * 5,
        "counter": base + "".join(f"第{i}步，把五花肉切成大小均匀的方块并冷水下锅。" for i in range(1, 8)),
        "mixed_tail": ZH_CLEAN[4] + "每个 epoch 结束后计算准确率。" * 7,
        "lines": base + "\n" + "\n".join(["春秋两季的气温变化较快"] * 6),
    }


def test_clean_chinese_and_mixed_paragraphs_are_not_repetitive():
    for text in ZH_CLEAN:
        assert repetition_score(text) < 0.5, (fired(repetition_signals(text)), text[:30])


@pytest.mark.parametrize("kind", sorted(zh_loops()))
def test_chinese_loops_are_caught(kind):
    """A CJK character is one token (filters.text_units): a Chinese sentence has as many tokens as
    characters, so periods, n-grams and content lines work as they do on English words."""
    assert is_repetitive(zh_loops()[kind]), fired(repetition_signals(zh_loops()[kind]))


def test_english_tokens_are_unchanged_by_cjk_units():
    from filters.repetition import _tokens

    text = "Café prices rose, then fell — twice: “up” and “down”."  # non-ASCII: the regex path
    ids, starts, ends, is_word = _tokens(text)
    assert [text.lower()[a:b] for a, b in zip(starts, ends)] == re.findall(r"\w+|[^\w\s]+", text.lower())
    zh_ids, *_ = _tokens("重复检测")
    assert len(zh_ids) == 4


# ------------------------------------------------------------------------------ batch path
def assert_batch_matches(texts, t=Thresholds()):
    """repetition_signals_batch gives every text exactly repetition_signals's dict: same keys
    in the same order, same floats (repr tells -0.0 from 0.0 and shows every bit that matters)."""
    from filters.repetition import repetition_signals_batch

    got = repetition_signals_batch(texts, t)
    assert len(got) == len(texts)
    for i, (text, sig) in enumerate(zip(texts, got)):
        want = repetition_signals(text, t)
        assert [(k, repr(v)) for k, v in sig.items()] == [(k, repr(v)) for k, v in want.items()], (i, text[:80])


def test_batch_equals_per_text_on_every_test_text(data):
    texts = [text for _, text, _ in data] + ZH_CLEAN + list(zh_loops().values())
    assert_batch_matches(texts)  # about 2 MB: several chunks of the batch path


def test_batch_edge_cases():
    from pydoc_data.topics import topics

    from filters.repetition import repetition_signals_batch

    prose = prose_chunks()[4]
    book = "\n\n".join(topics[k] for k in sorted(topics))[:120_000]
    assert repetition_signals_batch([]) == []
    assert_batch_matches(["", " ", "\n\t \r\n", "word", "Yes.", "1. Item", "a b", "..."])
    # the shortest loops each signal scores, a loop from the first character on
    assert_batch_matches(["aaaaa", "00000", "ababababab", "a" * 24, "x y z x y z x y z x", "a b a b a b a b a b",
                          "ok " * 10, "one two three four five six " * 3, "Same line.\nSame line.\nSame line."])
    assert_batch_matches([prose])  # a batch of one
    assert_batch_matches([book, prose, book + " The proof is complete." * 8, "Now we repeat. " * 40 + book])
    assert_batch_matches([ZH_CLEAN[1], prose, zh_loops()["tail_sentence"], "Café au lait. " * 10, prose[:300]])
    assert_batch_matches([None, prose])  # None is scored as ""


def test_batch_loops_at_text_boundaries_stay_in_their_text():
    """Loops at the very start or end of a text, next to texts that end or start with the same
    loop, and texts that only loop when joined: each text scores as it does alone."""
    prose = prose_chunks()[7][:900]
    sent = sentences_of(prose)[0]
    loops = {
        "tail": prose + " " + " ".join([sent] * 6),
        "head": " ".join([sent] * 6) + " " + prose,
        "half_tail": prose + " " + " ".join([sent] * 2),  # with half_head next: 4 units if joined
        "half_head": " ".join([sent] * 2) + " " + prose,
        "chars_tail": prose + " " + "ha" * 30,
        "chars_head": "ha" * 30 + " " + prose,
        "ab_tail": prose + " ab ab ab ab ab",  # unit "ab " across the separator if joined
        "ab_head": "ab ab ab ab ab " + prose,
        "ngram_tail": prose + " " + ", ".join(["we see the same six words"] * 2),
        "ngram_head": ", ".join(["we see the same six words"] * 2) + " " + prose,
        "lines": prose + "\n" + "\n".join([sent] * 5),
        "short_loop": "ok ok ok ok ok ok ok ok ok ok ok ok",
    }
    order = list(loops)
    for names in (order, order[::-1], ["half_tail", "half_head"], ["ab_tail", "ab_head"],
                  ["ngram_tail", "ngram_head", "ngram_tail"], ["tail", "short_loop", "head"]):
        assert_batch_matches([loops[n] for n in names])
    assert_batch_matches([loops[n] for n in order] + [prose] * 3 + [loops[n] for n in order])


def test_batch_equals_per_text_on_random_repetitive_texts():
    """Texts from a tiny vocabulary: periods, repeated n-grams, character loops, duplicate and
    numbered lines everywhere, in every length, also under other thresholds."""
    rng = random.Random(7)
    pieces = ["a", "b", "ab", "the", "cat", ".", ",", "!", " ", "  ", "\n", "0", "00", "ha", "1.", "x_y", "--"]
    texts = []
    for _ in range(400):
        unit = [rng.choice(pieces) for _ in range(rng.randint(1, 6))]
        body = [rng.choice(pieces) for _ in range(rng.randint(0, 400))]
        at = rng.randint(0, len(body))
        body[at:at] = unit * rng.randint(0, 30)
        texts.append(" ".join(body) if rng.random() < 0.5 else "".join(body))
    assert_batch_matches(texts)
    other = Thresholds(max_period=7, min_units=2, min_span_words=3, ngram=2, ngram_min_count=1, min_line_repeats=1,
                       compression_min_bytes=0)
    assert_batch_matches(texts[:150], other)
    assert_batch_matches(texts[:150], Thresholds(ngram=3, ngram_min_count=2, max_chars=300))


def test_batch_splits_many_texts_into_chunks():
    rng = random.Random(3)
    words = ["alpha", "beta", "gamma", "delta", "again", "and", "the", "."]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(1500)]
    assert_batch_matches(texts)  # more than one chunk of at most 1024 texts


def test_batch_tokens_are_the_per_text_tokens():
    """The batch tokeniser gives every text _tokens's ids (ngram_coverage hashes the ids, so the
    numbering itself must match, not only which tokens are equal), offsets and word flags."""
    from filters.repetition import _tokens, _tokens_ascii_batch

    prose = [c for c in prose_chunks() if c.isascii()]
    texts = ["", "b a b a", prose[1], "  ", "A a A; a;a", "x" * 30, prose[2], "end."]
    b = _tokens_ascii_batch(texts)
    for i, text in enumerate(texts):
        lo, hi = b.tok_off[i], b.tok_off[i + 1]
        ids, starts, ends, is_word = _tokens(text)
        assert b.ids[lo:hi].tolist() == ids.tolist()
        assert (b.starts[lo:hi] - b.offs[i]).tolist() == starts.tolist()
        assert (b.ends[lo:hi] - b.offs[i]).tolist() == ends.tolist()
        assert b.is_word[lo:hi].tolist() == is_word.tolist()
