"""Script-aware units: English as words (exactly as \\w+), Chinese as characters, mixed text both."""

import re

from filters.text_units import cjk_share, is_cjk, sentences, unit_count, units

ENGLISH = "The quick brown fox, 2.5 times faster, jumps over the lazy dog's tail."
CHINESE = "多模态大模型在图像理解任务上表现优秀。它可以回答关于图片的问题！"
MIXED = "InternVL 2.5 在多个基准上表现优秀, and it reads 中文 too."


def test_english_splits_exactly_as_word_runs():
    assert units(ENGLISH) == re.findall(r"\w+", ENGLISH)
    assert unit_count(ENGLISH) == len(re.findall(r"\w+", ENGLISH)) and cjk_share(ENGLISH) == 0.0


def test_chinese_is_one_unit_per_character():
    assert units("图像理解") == ["图", "像", "理", "解"]
    assert unit_count(CHINESE) == len(re.findall(r"[\u4e00-\u9fff]", CHINESE))
    assert cjk_share(CHINESE) == 1.0 and is_cjk(CHINESE)


def test_mixed_text_keeps_words_and_characters():
    assert units(MIXED)[:6] == ["InternVL", "2", "5", "在", "多", "个"]
    assert "reads" in units(MIXED) and "中" in units(MIXED) and "文" in units(MIXED)
    assert 0.3 < cjk_share(MIXED) < 0.8
    assert not is_cjk(ENGLISH)


def test_sentences_end_at_chinese_punctuation_without_spaces():
    assert sentences(CHINESE) == ["多模态大模型在图像理解任务上表现优秀", "它可以回答关于图片的问题"]
    assert len(sentences("One. Two! Three?")) == 3


def test_the_ascii_fast_path_splits_exactly_as_the_regex():
    import string

    from filters.text_units import UNIT_RE, cjk_share, units

    rng = __import__("random").Random(0)
    texts = ["", "   ", "a_b c-d e.f 12,3 x\ty\nz __", string.printable, "\x00\x7f end"]
    texts += ["".join(rng.choice(string.printable) for _ in range(200)) for _ in range(200)]
    for t in texts:
        assert units(t) == UNIT_RE.findall(t), t
        assert cjk_share(t) == 0.0
    assert units("naïve 中文") == ["naïve", "中", "文"]  # not ASCII: the regex path


def test_has_cjk_finds_a_cjk_character_anywhere():
    from filters.text_units import has_cjk

    assert not has_cjk("") and not has_cjk("plain ASCII, 12 words.") and not has_cjk("naïve café")
    assert has_cjk("mixed 中 text") and has_cjk("ひらがな") and has_cjk("x" * 1000 + "字")
