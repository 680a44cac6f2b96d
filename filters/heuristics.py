"""InternVL 2.5's heuristic rules: cheap checks for answers no model should learn from.

Each rule is a small function over one record (its turns and media) that returns a
detail string when the record breaks the rule, else None. The rule's name is the reject
reason; its threshold comes from the recipe (stages.filter.*, see HeuristicThresholds):

- empty_answer             an answer shorter than `min_answer_chars` characters
- trivial_answer           an answer with no letter or digit at all ("...", "?!", "……", "？！");
                           Han characters are letters, so "是。" is an answer
- answer_equals_question   an answer equal to its question (case, spaces, placeholders ignored;
                           when either holds CJK text, punctuation of both scripts is ignored too)
- abnormal_sentence_length a sentence longer than `max_sentence_words` words (English and other
                           spaced scripts: text between . ! ? and a space, or a newline) or, for a
                           mostly Chinese/Japanese sentence, `max_sentence_chars_cjk` units
                           (characters; a Latin word counts one), a CJK sentence also ending at
                           。！？；…: run-on garbage, minified blobs
- zero_run                 `max_zero_run` or more zeros in a row ("0.000000000000000001")
- char_run                 one non-space character `max_char_run` or more times in a row
- duplicate_lines          more than `max_duplicate_line_ratio` of an answer's content lines
                           (at least 4 lines with a letter or digit) repeat an earlier line
- placeholder_mismatch     the <image>/<video>/<audio> placeholders in the questions differ
                           from the media items, or an answer contains one
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any, Callable

from filters import text_units
from filters.placeholders import PLACEHOLDER_RE as PLACEHOLDER
from filters.placeholders import PLACEHOLDERS

# Where a sentence of a spaced script ends: an end mark of either script followed by whitespace,
# or newlines (a CJK sentence needs no space after it: text_units.SENTENCE_END_BOTH_SCRIPTS)
SENTENCE_END_BEFORE_SPACE = re.compile(r"[.!?。！？]+\s+|\n+")


@dataclasses.dataclass(frozen=True)
class HeuristicThresholds:
    """The rules' thresholds (recipe stages.filter.*). Per script where units differ:

    - max_sentence_words (300): English and other spaced scripts, whitespace-separated words;
    - max_sentence_chars_cjk (450): mostly Chinese/Japanese sentences, in text units (each CJK
      character one, a Latin word or number one). A Chinese word averages about 1.5 characters,
      so 450 is the English 300 words; real prose is far below it (the longest of 7,362 Chinese
      sentences of the Chinese edition of Dive into Deep Learning has 112 units, 99% have <= 70).
    - min_answer_chars, max_zero_run, max_char_run: characters in every script.
    """

    min_answer_chars: int = 1
    max_sentence_words: int = 300
    max_sentence_chars_cjk: int = 450
    max_zero_run: int = 32
    max_char_run: int = 80
    max_duplicate_line_ratio: float = 0.5
    min_lines_for_duplicates: int = 4

    @classmethod
    def from_config(cls, cfg: Any) -> "HeuristicThresholds":
        """The thresholds named the same in a FilterConfig (stages.filter.*)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})


DEFAULT = HeuristicThresholds()
Turns = list[dict[str, Any]]


def answers(turns: Turns) -> list[tuple[int, str]]:
    return [(i, t.get("value") or "") for i, t in enumerate(turns) if t.get("from") == "gpt"]


def _normal(text: str) -> str:
    return " ".join(PLACEHOLDER.sub(" ", text).lower().split())


def _normal_units(text: str) -> str:
    """Units only (words, CJK characters): no spaces or punctuation of either script."""
    return " ".join(text_units.units(PLACEHOLDER.sub(" ", text).lower()))


# ------------------------------------------------------------------------------ rules
def empty_answer(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    for i, text in answers(turns):
        if len(text.strip()) < t.min_answer_chars:
            return f"turn {i + 1} has {len(text.strip())} characters (min_answer_chars={t.min_answer_chars})"
    return None


def trivial_answer(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    for i, text in answers(turns):
        if text.strip() and not any(c.isalnum() for c in text):
            return f"turn {i + 1} has no letter or digit: {text.strip()[:40]!r}"
    return None


def answer_equals_question(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    for i in range(1, len(turns)):
        q, a = turns[i - 1], turns[i]
        if q.get("from") == "human" and a.get("from") == "gpt":
            qv, av = q.get("value") or "", a.get("value") or ""
            # Chinese has no spaces to collapse and often drops or swaps the final ？/。: compare units
            normal = _normal_units if text_units.has_cjk(qv + av) else _normal
            na = normal(av)
            if na and na == normal(qv):
                return f"turn {i + 1} repeats its question: {na[:60]!r}"
    return None


def abnormal_sentence_length(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    for i, text in answers(turns):
        if text_units.has_cjk(text):
            detail = _long_cjk_sentence(text, t)
            if detail:
                return f"turn {i + 1} has {detail}"
            continue
        if len(text.split()) <= t.max_sentence_words:
            continue  # no sentence can have more words than the whole answer
        longest = max((len(s.split()) for s in SENTENCE_END_BEFORE_SPACE.split(text)), default=0)
        if longest > t.max_sentence_words:
            return f"turn {i + 1} has a {longest}-word sentence (max_sentence_words={t.max_sentence_words})"
    return None


def _long_cjk_sentence(text: str, t: HeuristicThresholds) -> str | None:
    """Text with CJK characters: sentences also end at 。！？；…, and are counted in units;
    a mostly-CJK sentence is held to max_sentence_chars_cjk, any other to max_sentence_words."""
    if text_units.unit_count(text) <= min(t.max_sentence_words, t.max_sentence_chars_cjk):
        return None
    for sentence in text_units.sentences(text):
        n = text_units.unit_count(sentence)
        if text_units.is_cjk(sentence):
            if n > t.max_sentence_chars_cjk:
                return f"a {n}-character sentence (max_sentence_chars_cjk={t.max_sentence_chars_cjk})"
        elif n > t.max_sentence_words:
            return f"a {n}-word sentence (max_sentence_words={t.max_sentence_words})"
    return None


def zero_run(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    pattern = re.compile("0{%d,}" % t.max_zero_run)
    zeros = "0" * t.max_zero_run
    for i, text in answers(turns):
        if zeros not in text:  # a substring search is far cheaper than the regex, which needs it
            continue
        m = pattern.search(text)
        if m:
            return f"turn {i + 1} has {len(m.group())} zeros in a row (max_zero_run={t.max_zero_run})"
    return None


def char_run(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    pattern = re.compile(r"(\S)\1{%d,}" % (t.max_char_run - 1))
    for i, text in answers(turns):
        if not _may_hold_run(text, t.max_char_run):
            continue
        m = pattern.search(text)
        if m:
            return (f"turn {i + 1} repeats {m.group(1)!r} {len(m.group())} times "
                    f"(max_char_run={t.max_char_run})")
    return None


def _may_hold_run(text: str, n: int) -> bool:
    """False only when no non-space character occurs n times in a row. Such a run covers two
    consecutive multiples of n // 2 and everything between them: a few slices, not the
    backtracking regex at every character (about 50 us on 1.2 KB)."""
    if n < 2:
        return True
    step = n // 2
    samples = text[::step]
    for k in range(len(samples) - 1):
        c = samples[k]
        if c == samples[k + 1] and not c.isspace() and text[k * step: (k + 1) * step + 1] == c * (step + 1):
            return True
    return False


def duplicate_lines(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    for i, text in answers(turns):
        raw = text.splitlines()
        if len(raw) < t.min_lines_for_duplicates:  # the lines kept below are fewer still
            continue
        lines = [" ".join(x.split()).lower() for x in raw]
        lines = [x for x in lines if any(c.isalnum() for c in x)]
        if len(lines) < t.min_lines_for_duplicates:
            continue
        ratio = 1 - len(Counter(lines)) / len(lines)
        if ratio > t.max_duplicate_line_ratio:
            return (f"turn {i + 1}: {ratio:.2f} of {len(lines)} lines are duplicates "
                    f"(max_duplicate_line_ratio={t.max_duplicate_line_ratio})")
    return None


def placeholder_mismatch(turns: Turns, media: list, t: HeuristicThresholds) -> str | None:
    for kind, tag in PLACEHOLDERS.items():
        n_items = sum((m or {}).get("kind") == kind for m in media or [])
        n_tags = sum((x.get("value") or "").count(tag) for x in turns if x.get("from") != "gpt")
        if n_items != n_tags:
            return f"{n_items} {kind} item(s) but {n_tags} {tag} placeholder(s)"
    for i, text in answers(turns):
        if PLACEHOLDER.search(text):
            return f"turn {i + 1} (an answer) contains a media placeholder"
    return None


Rule = Callable[[Turns, list, HeuristicThresholds], "str | None"]
RULES: dict[str, Rule] = {
    "empty_answer": empty_answer,
    "trivial_answer": trivial_answer,
    "answer_equals_question": answer_equals_question,
    "placeholder_mismatch": placeholder_mismatch,
    "zero_run": zero_run,
    "char_run": char_run,
    "duplicate_lines": duplicate_lines,
    "abnormal_sentence_length": abnormal_sentence_length,
}


def check(turns: Turns, media: list | None = None, thresholds: HeuristicThresholds = DEFAULT
          ) -> list[tuple[str, str]]:
    """(rule name, detail) for every rule the record breaks, in RULES order."""
    out = []
    for name, rule in RULES.items():
        detail = rule(turns or [], media or [], thresholds)
        if detail is not None:
            out.append((name, detail))
    return out


__all__ = ["HeuristicThresholds", "RULES", "check"]
