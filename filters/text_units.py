"""Script-aware text units: words for spaced scripts, single characters for CJK.

Chinese and Japanese write no spaces between words, so "a word is a run of \\w" turns a whole
Chinese clause into one "word": one inserted word then changes most word n-grams, and word
counts mean nothing. Here every Han, kana or CJK-compatibility character is a unit of its own,
and a run of any other word characters (Latin, Cyrillic, Hangul, digits, ...) is one unit, so

    units("InternVL 2.5 在多个基准上表现优秀")
    == ["InternVL", "2", "5", "在", "多", "个", "基", "准", "上", "表", "现", "优", "秀"]

n-grams of units are then word n-grams in English and character n-grams in Chinese, and
mixed text works. Text without CJK characters splits exactly as `\\w+` did, so English
results do not move. Every place that counts or shingles words uses these functions:
dedupe (MinHash shingles, their Jaccard verification, video-instruction vectors) and the
heuristic rules (sentence length is counted in units: words, or characters for CJK). They live
in filters/ because the filters use them and import nothing from curate/.
"""

from __future__ import annotations

import re

# Hiragana, Katakana, CJK Unified Ideographs (+ Extension A), CJK Compatibility Ideographs,
# the supplementary ideograph planes (Extensions B-F and compatibility supplement).
CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
UNIT_RE = re.compile(f"[{CJK_RANGES}]|[^\\W{CJK_RANGES}]+")
# Sentence ends of both script families: . ! ? before a space, a run of 。！？；… (they end
# Chinese sentences without a space after), or newlines.
SENTENCE_END_BOTH_SCRIPTS = re.compile(r"[.!?]+\s+|[。！？；…]+|\n+")


# ASCII text has no CJK character, so its units are its runs of [A-Za-z0-9_]: every other
# ASCII character becomes a space and str.split finds them, 3x faster than the regex
_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or c == 95)})


def units(text: str) -> list[str]:
    """The text's units in order: words of spaced scripts, single CJK characters."""
    if text.isascii():
        return text.translate(_ASCII_NON_WORD).split()
    return UNIT_RE.findall(text)


def unit_count(text: str) -> int:
    return sum(1 for _ in UNIT_RE.finditer(text))


def has_cjk(text: str) -> bool:
    """Whether the text holds a CJK character (ASCII text never does: no regex scan for it)."""
    return not text.isascii() and CJK_CHAR.search(text) is not None


def cjk_share(text: str) -> float:
    """Share of the units that are CJK characters (0 for English, about 1 for Chinese)."""
    if text.isascii():
        return 0.0
    found = UNIT_RE.findall(text)
    if not found:
        return 0.0
    return sum(1 for u in found if CJK_CHAR.fullmatch(u)) / len(found)


def is_cjk(text: str, threshold: float = 0.5) -> bool:
    """Mostly CJK: the rules that need a script (sentence length) use the CJK thresholds."""
    return cjk_share(text) >= threshold


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END_BOTH_SCRIPTS.split(text) if s.strip()]
