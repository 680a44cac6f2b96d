"""The repetition filter has one computation (filters.repetition._signals); the batch path
only skips the signals its cheap checks prove to be 0 and tokenises ASCII texts vectorised.
These tests hold that shortcut to the full measurement (every signal measured, tokens from
the regex) on every text of the test sets and of random texts, Chinese and empty ones too."""

from __future__ import annotations

import random

import pytest

from filters.repetition import (
    Thresholds,
    _signals,
    _tokens,
    repetition_score,
    repetition_signals,
    repetition_signals_batch,
)
from tests.filters.test_repetition import ZH_CLEAN, labelled_set, prose_chunks, zh_loops

OTHER = Thresholds(max_period=7, min_units=2, min_span_words=3, ngram=2, ngram_min_count=1, min_line_repeats=1,
                   compression_min_bytes=0)
SHORT_WINDOWS = Thresholds(ngram=3, ngram_min_count=2, max_chars=300)


def measured(text: str | None, t: Thresholds) -> dict[str, float]:
    """Every signal measured on the text (or on its head and tail window, the worse one)."""
    text = text or ""
    if len(text) > t.max_chars:
        half = t.max_chars // 2
        return max(measured(text[:half], t), measured(text[-half:], t), key=lambda s: s["score"])
    return _signals(text, *_tokens(text), t)


def assert_same(texts: list[str | None], t: Thresholds) -> None:
    got = repetition_signals_batch(texts, t)
    assert len(got) == len(texts)
    for i, (text, sig) in enumerate(zip(texts, got)):
        want = measured(text, t)
        # repr tells -0.0 from 0.0 and shows every bit that matters; the keys keep their order
        assert [(k, repr(v)) for k, v in sig.items()] == [(k, repr(v)) for k, v in want.items()], (i, text)


def random_texts(seed: int, n: int) -> list[str]:
    """Texts from a tiny vocabulary (English, Chinese, line and paragraph separators): loops,
    repeated n-grams, character runs, duplicate and numbered lines, in every length."""
    rng = random.Random(seed)
    pieces = ["a", "b", "ab", "the", "cat", ".", ",", "!", " ", "  ", "\n", "0", "00", "ha", "1.", "x_y", "--",
              "重复", "检测", "。", "第1步，", "é", "\u2028", "\x85", "\x1c", "\t", "\r\n"]
    texts = []
    for _ in range(n):
        unit = [rng.choice(pieces) for _ in range(rng.randint(1, 6))]
        body = [rng.choice(pieces) for _ in range(rng.randint(0, 400))]
        at = rng.randint(0, len(body))
        body[at:at] = unit * rng.randint(0, 30)
        text = " ".join(body) if rng.random() < 0.5 else "".join(body)
        texts.append(text if rng.random() < 0.5 else text.encode("ascii", "ignore").decode())  # half ASCII
    return texts


def test_batch_equals_the_full_measurement_on_the_test_sets():
    from pydoc_data.topics import topics

    book = "\n\n".join(topics[k] for k in sorted(topics))
    texts = [t for _, t, _ in labelled_set()] + ZH_CLEAN + list(zh_loops().values()) + prose_chunks()
    texts += [book[:120_000], book[:45_000] + " loop again." * 500, "Café " * 9000, "", None, " \n "]
    assert_same(texts, Thresholds())


@pytest.mark.parametrize("t", [Thresholds(), OTHER, SHORT_WINDOWS], ids=["default", "other", "short_windows"])
def test_batch_equals_the_full_measurement_on_random_texts(t):
    texts = random_texts(11, 600)
    assert sum(x.isascii() for x in texts) > 200 and sum(not x.isascii() for x in texts) > 200
    assert_same(texts, t)


def test_the_public_functions_are_the_batch_path():
    texts = random_texts(12, 40) + ["", "Same line.\nSame line.\nSame line.\nSame line."]
    batch = repetition_signals_batch(texts)
    assert [repetition_signals(x) for x in texts] == batch
    assert [repetition_score(x) for x in texts] == [s["score"] for s in batch]
    assert max(s["score"] for s in batch) >= 0.5  # the set holds loops, not only clean text
