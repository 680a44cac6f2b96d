"""ASR hallucination rules on hand-made transcripts, English and Chinese (the transcripts in the
first block are what Whisper tiny.en and base wrote over noise, music and silence)."""

from __future__ import annotations

import pytest

from filters.asr_hallucination import check, tail_loop

LOOP_EN = "I'm going to go ahead and see what happens. " * 14
LOOP_CUT = "1.5m de " * 44 + "1,5"  # the last copy cut off where the token budget ran out


@pytest.mark.parametrize("text,seconds,rule,evidence", [
    (LOOP_EN, 30.0, "loop", "'i m going to go ahead and see what happens' (14.0 times)"),
    ("I'm not sure if I can do it. " * 10, 20.0, "loop", "(10.0 times)"),
    (LOOP_CUT, 30.0, "loop", "repeat '1 5m de'"),
    ("Yn yw'n" + " yw'n" * 55 + " y", 30.0, "loop", "repeat 'yw n'"),
    ("1." + "1." * 110, 5.0, "rate", "111 words and 0 CJK characters in 5.0 s"),
    (". . . . . . . . . .", 30.0, "no words", "'. . . . . . . . . .'"),
    ("♪ ♪", 8.0, "no words", "'♪ ♪'"),
    ("you", 30.0, "outro", "'you' is the whole transcript of a 30.0 s clip"),
    ("Thanks for watching!", 12.0, "outro", "12.0 s clip"),
    ("Thank you. Please subscribe.", 20.0, "outro", "'Thank you. Please subscribe.'"),
    ("And that was the weather. Subtitles by the Amara.org community", 9.0, "credit", "Amara.org community"),
    # Chinese
    ("谢谢观看！", 10.0, "outro", "'谢谢观看！'"),
    ("字幕由Amara.org社区提供", 3.0, "credit", "'字幕由Amara.org社区提供'"),
    ("请不吝点赞 订阅 转发 打赏支持明镜与点点栏目", 25.0, "credit", "明镜与点点栏目"),
    ("我们今天讨论天气。" * 3, 20.0, "loop", "repeat '我们今天讨论天气' (3.0 times)"),
    ("今天天气很好，" * 12, 30.0, "loop", "(12.0 times)"),
    ("这是一个非常长的句子，里面有很多很多的汉字，说得比任何人都快得多。", 2.0, "rate", "0 words and 30 CJK"),
])
def test_hallucinations_are_caught_with_their_evidence(text, seconds, rule, evidence):
    found = check(text, seconds)
    lines = [f for f in found if f.startswith(rule + ":")]
    assert lines, found
    assert evidence in lines[0]


@pytest.mark.parametrize("text,seconds", [
    ("What does this video show?", 2.2),
    ("Thank you.", 1.2),  # someone saying it: a short clip
    ("Thank you for calling. Please hold.", 3.0),  # an outro phrase inside other speech
    ("No, no, no, no. I said the blue one.", 3.5),  # a short repeat, not a loop
    ("Repeat after me: hello, hello, hello.", 3.0),
    ("I watched the film with subtitles by default.", 3.0),
    ("one two three four five six seven eight nine ten", 4.0),  # counting is fast, not 6 words/s
    ("今天天气很好，我们去公园散步吧。", 3.5),
    ("谢谢。", 1.0),
    ("InternVL 2.5 在多个基准上表现优秀", 3.0),
])
def test_speech_passes(text, seconds):
    assert check(text, seconds) == []


def test_the_rate_limits_are_parameters_and_mix_scripts():
    text = " ".join(f"word{i}" for i in range(20))  # 20 words in 4 s: 5 per second
    assert check(text, 4.0) == []
    assert check(text, 4.0, max_words_per_second=4.0)[0].startswith("rate:")
    # 1 word and 47 characters: 1/6 s + 47/12 s = 4.1 s at the defaults
    mixed = "我们用 Whisper 转写" + "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜"
    assert check(mixed, 4.5) == [] and check(mixed, 3.5)[0].startswith("rate:")
    assert check("one two", 0.2) == []  # a clip shorter than 1 s is measured as 1 s


def test_tail_loop_finds_the_period_and_ignores_a_cut_last_unit():
    assert tail_loop(["a", "b", "c", "b", "c", "b", "c"]) == (2, 6, 7)
    assert tail_loop(["x", "ab", "ab", "ab", "a"]) == (1, 3, 4)
    assert tail_loop(["just", "one", "sentence"]) == (0, 0, 0)
    assert tail_loop([]) == (0, 0, 0)
