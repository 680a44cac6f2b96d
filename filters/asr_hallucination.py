"""Whisper's hallucinations: text it writes where nobody speaks (silence, noise, music).

Whisper was trained on subtitles scraped from the web, so on audio without speech it tends to
write what subtitle files hold where nothing is said: an outro ("Thanks for watching!", a
lone "you"), the subtitler's credit ("Subtitles by the Amara.org community", "字幕由Amara.org
社区提供"), or it loops: a phrase repeated until the 224-token window is full (Radford et al.
2022, sec. 6, on repetition loops; Koenecke et al. 2024, "Careless Whisper", on hallucinated
text over non-speech). A transcript is flagged when one of these holds:

1. `no words` - the text holds punctuation or symbols only (". . . . ." on faint noise).
2. `credit` - it contains a subtitler's credit line (`CREDITS`): nobody says those.
3. `outro` - it consists only of outro phrases (`OUTROS`: "thank you", "you", "谢谢观看", ...)
   and the clip is long for them (fewer than `OUTRO_UNITS_PER_SECOND` units per second, well
   under any speaking rate): "Thank you." over 12 s of noise, not a 1 s clip of someone saying it.
4. `loop` - its tail repeats an n-gram of 1..`MAX_PERIOD` units at least `MIN_REPEATS` times,
   over at least `MIN_LOOP_UNITS` units (the last unit may be cut off: Whisper stops mid-word
   when the window's token budget runs out).
5. `rate` - more text than the clip can hold: words / `max_words_per_second` + CJK characters /
   `max_cjk_per_second` is longer than the clip (at least 1 s). English speech runs at about
   2.5-3 words per second and Mandarin at 4-5 characters per second; the defaults (6 and 12)
   are twice a fast speaker.

Units are script-aware (filters.text_units): a word of a spaced script, or one CJK character.
Phrases match after lower-casing and dropping punctuation, so "Thanks for watching!" and
"thanks for watching" are the same. The lists are short on purpose: each entry is a phrase
Whisper writes over non-speech, not a phrase that is merely common in speech.
"""

from __future__ import annotations

import re

from filters.text_units import CJK_CHAR, units

# Credits of subtitlers and channels: flagged wherever they occur.
CREDITS_EN = ("Subtitles by the Amara.org community", "Amara.org community", "Transcription by CastingWords",
              "Transcript: Emily Beynon")
CREDITS_ZH = ("字幕由Amara.org社区提供", "由Amara.org社区提供的字幕", "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目",
              "明镜与点点栏目", "中文字幕志愿者", "字幕志愿者", "优优独播剧场")
# Outros and fillers: flagged when they are all the transcript of a clip long for them.
OUTROS_EN = ("you", "thank you", "thank you very much", "thank you so much", "thanks", "thanks for watching",
             "thank you for watching", "thank you so much for watching", "thanks for watching and see you next time",
             "please subscribe", "please like and subscribe", "like and subscribe",
             "don t forget to like and subscribe", "subscribe to my channel", "see you next time",
             "see you in the next video", "bye", "bye bye", "music", "applause", "silence")
OUTROS_ZH = ("谢谢观看", "感谢观看", "谢谢收看", "谢谢大家", "谢谢", "请订阅我的频道", "订阅我的频道", "点赞订阅",
             "下次见", "我们下期再见", "下期再见", "再见")

MAX_PERIOD = 16  # longest repeated n-gram looked for, in units
MIN_REPEATS = 3  # copies of it in a row at the end
MIN_LOOP_UNITS = 8  # units the repeated stretch spans at least
OUTRO_UNITS_PER_SECOND = 1.0  # an outro-only transcript slower than this is not speech


def normalise(text: str) -> list[str]:
    """Lower-cased units (words, single CJK characters): no punctuation, no spacing differences."""
    return units(text.lower())


def _key(phrase: str) -> str:
    return " ".join(normalise(phrase))


def _show(words: list[str]) -> str:
    """Units joined for a reader: a space between words, none between CJK characters."""
    return re.sub(f"(?<={CJK_CHAR.pattern}) (?={CJK_CHAR.pattern})", "", " ".join(words))


CREDIT_KEYS = {_key(p): p for p in CREDITS_EN + CREDITS_ZH}
OUTRO_KEYS = sorted({_key(p) for p in OUTROS_EN + OUTROS_ZH}, key=len, reverse=True)
OUTRO_ONLY = re.compile("(?:(?:" + "|".join(re.escape(k) for k in OUTRO_KEYS) + ")(?: |$))+")


def tail_loop(words: list[str], max_period: int = MAX_PERIOD) -> tuple[int, int, int]:
    """(period, span, end): the longest stretch words[end - span:end] at the end of `words` that
    repeats one n-gram of `period` units (end is len(words), or one less when the last unit is
    cut short and breaks the loop); (0, 0, 0) when nothing repeats."""
    best = (0, 0, 0)
    for n in (len(words), len(words) - 1):
        for p in range(1, min(max_period, n // 2) + 1):
            j = n - 1 - p
            while j >= 0 and words[j] == words[j + p]:
                j -= 1
            span = n - 1 - j
            if span >= 2 * p and span > best[1]:  # at least two copies
                best = (p, span, n)
    return best


def check(text: str, seconds: float, max_words_per_second: float = 6.0,
          max_cjk_per_second: float = 12.0) -> list[str]:
    """The evidence that `text`, Whisper's transcript of a clip of `seconds`, is hallucinated
    (one line per rule that fires); empty when none does."""
    words = normalise(text)
    if not words:
        return [f"no words: the transcript is only {text.strip()[:40]!r}"]
    found = []
    joined = " ".join(words)
    padded = f" {joined} "
    credits = [k for k in CREDIT_KEYS if f" {k} " in padded]
    if credits:
        found.append(f"credit: {CREDIT_KEYS[credits[0]]!r}")
    if OUTRO_ONLY.fullmatch(joined) and len(words) < OUTRO_UNITS_PER_SECOND * seconds:
        found.append(f"outro: {text.strip()[:60]!r} is the whole transcript of a {seconds:.1f} s clip")
    period, span, end = tail_loop(words)
    if period and span >= MIN_LOOP_UNITS and span >= MIN_REPEATS * period:
        gram = _show(words[end - span:end - span + period])
        found.append(f"loop: the last {span} of {len(words)} units repeat {gram!r} ({span / period:.1f} times)")
    cjk = sum(1 for w in words if CJK_CHAR.fullmatch(w))
    needed = (len(words) - cjk) / max_words_per_second + cjk / max_cjk_per_second
    if needed > max(seconds, 1.0):
        found.append(f"rate: {len(words) - cjk} words and {cjk} CJK characters in {seconds:.1f} s "
                     f"(at most {max_words_per_second:g} words or {max_cjk_per_second:g} characters per second)")
    return found
