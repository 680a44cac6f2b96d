"""Robust parsing of LLM replies: a domain, a 0-10 score, a yes/no.

Models answer in many shapes: "7", "Score: 7/10", "**8**", '{"score": 6}', "I would
rate this 9 out of 10.", or a chatty paragraph; in Chinese "评分：8", "8分", "满分10分，给7分",
"数学", "是" / "否". Each parser returns None when it cannot
find one unambiguous answer (or the number is outside 0-10); the caller retries once and
then records the sample as unscored. None is never turned into a made-up value.
"""

from __future__ import annotations

import json
import re

SCORE_MIN, SCORE_MAX = 0.0, 10.0
_NUMBER = r"(-?\d+(?:\.\d+)?)"
# A number right after a score word ("score: 7", "rating of 8", "rate it 9").
_KEYWORD_NUMBER = re.compile(r"\b(?:score|rating|rated|rate(?: it| this)?|quality)\b[^0-9\-\n]{0,20}?" + _NUMBER, re.I)
# A number written as a fraction of ten ("7/10", "7 out of 10").
_OUT_OF_TEN = re.compile(_NUMBER + r"\s*(?:/|out of)\s*10\b", re.I)
_ANY_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w])")
# Chinese: a number after 评分/分数/得分/打分/给 or before 分 ("8分"), but not the 10 of 满分10分 / 10分制.
_ZH_KEYWORD_NUMBER = re.compile(r"(?:评分|分数|得分|打分|评为|给出?)[^0-9\-\n]{0,6}?" + _NUMBER)
_ZH_POINTS = re.compile(r"(?<!满分)(?<![\d.])" + _NUMBER + r"\s*分(?!制)")
_ZH_OUT_OF_TEN = re.compile(r"(?:满分\s*10\s*分|10\s*分制)")
_ZH_DOMAINS = {"学科": "disciplinary", "学术": "disciplinary", "编程": "programming", "代码": "programming",
               "程序": "programming", "数学": "mathematics", "通用": "general", "日常": "general", "一般": "general"}
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def _strip(reply: str) -> str:
    """Drop reasoning blocks and markdown emphasis/code fences."""
    reply = _THINK.sub(" ", reply or "")
    return re.sub(r"[*`_#]", " ", reply).strip()


def _json_field(reply: str, *names: str):
    """A value from a JSON object anywhere in the reply, if there is one."""
    match = re.search(r"\{.*?\}", reply, re.S)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    lower = {str(k).lower(): v for k, v in obj.items()}
    for name in names:
        if name in lower:
            return lower[name]
    return None


def _in_range(value: float | None) -> float | None:
    if value is None or not SCORE_MIN <= value <= SCORE_MAX:
        return None
    return value


def parse_score(reply: str | None) -> float | None:
    """The 0-10 score in a reply, or None (no number, several candidates, or out of range)."""
    if reply is None:
        return None
    value = _json_field(reply, "score", "rating", "quality")
    if value is not None:
        try:
            return _in_range(float(value))
        except (TypeError, ValueError):
            return None
    text = _strip(reply)
    zh_text = _ZH_OUT_OF_TEN.sub(" ", text)
    marked = {float(v) for pattern in (_KEYWORD_NUMBER, _OUT_OF_TEN) for v in pattern.findall(text)}
    marked |= {float(v) for pattern in (_ZH_KEYWORD_NUMBER, _ZH_POINTS) for v in pattern.findall(zh_text)}
    if marked:  # numbers tied to "score"/"rating" or written "/10"; two different ones are ambiguous
        return _in_range(marked.pop()) if len(marked) == 1 else None
    numbers = {float(v) for v in _ANY_NUMBER.findall(zh_text)}
    if len(numbers) == 1:  # a lone number is the answer; several without a keyword are ambiguous
        return _in_range(numbers.pop())
    return None


def parse_domain(reply: str | None, domains: tuple[str, ...] | list[str]) -> str | None:
    """The first known domain named in the reply (JSON {"domain": ...} first), else None."""
    if reply is None:
        return None
    value = _json_field(reply, "domain", "category")
    if isinstance(value, str) and value.strip().lower() in domains:
        return value.strip().lower()
    text = _strip(reply).lower()
    hits = [(m.start(), d) for d in domains for m in [re.search(rf"\b{re.escape(d)}\b", text)] if m]
    if not hits:  # common variants: "math", "code", "coding"
        aliases = {"math": "mathematics", "maths": "mathematics", "code": "programming", "coding": "programming"}
        hits = [(m.start(), aliases[a]) for a in aliases if aliases[a] in domains
                for m in [re.search(rf"\b{a}\b", text)] if m]
    if not hits:  # a Chinese reply names the domain in Chinese (no word boundaries there)
        hits = [(text.find(zh), d) for zh, d in _ZH_DOMAINS.items() if d in domains and zh in text]
    return min(hits)[1] if hits else None


_NEGATED = re.compile(r"\b(?:not|isn't|is not|no)\s+(?:\w+\s+){0,2}repetitive\b", re.I)


def parse_yes_no(reply: str | None) -> bool | None:
    """True for yes, False for no, None when the reply says neither (or both first)."""
    if reply is None:
        return None
    value = _json_field(reply, "repetitive", "answer", "repetition")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return value.strip().lower() == "yes"
    text = _strip(reply).lower()
    match = re.search(r"\b(yes|no)\b", text)
    if match:
        return match.group(1) == "yes"
    zh = re.match(r"\W*(不是|否|没有|不重复|是|有)", text)  # the reply opens with its answer ("是的，..."/"否。")
    if zh:
        return zh.group(1) in ("是", "有")
    if _NEGATED.search(text):
        return False
    if re.search(r"\b(?:is|are|very|highly)\s+repetitive\b", text):
        return True
    return None
