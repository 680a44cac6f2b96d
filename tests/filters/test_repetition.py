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
