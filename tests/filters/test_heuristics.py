"""Each InternVL heuristic rule fires on its defect, not on ordinary samples, at the recipe threshold."""

import pytest

from curate.recipe import FilterConfig
from filters.heuristics import RULES, HeuristicThresholds, check
from tests.filters.test_repetition import prose_chunks


def conv(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


IMAGE = [{"kind": "image", "ref": "a.jpg"}]
BAD = {
    "empty_answer": (conv("What is shown?", "   "), []),
    "trivial_answer": (conv("What is shown?", "..."), []),
    "answer_equals_question": (conv("<image>\nWhat colour is the car?", "what colour is  the car?"), IMAGE),
    "placeholder_mismatch": (conv("<image>\n<image>\nCompare them.", "They match."), IMAGE),
    "zero_run": (conv("Give the value.", "The value is 0." + "0" * 40 + "1."), []),
    "char_run": (conv("Draw a line.", "Here: " + "=" * 100), []),
    "duplicate_lines": (conv("List the items.", "apples and pears\n" * 5 + "plums and figs"), []),
    "abnormal_sentence_length": (conv("Summarise.", " ".join(["word"] * 400)), []),
}


@pytest.mark.parametrize("rule", sorted(BAD))
def test_each_rule_fires_on_its_defect(rule):
    turns, media = BAD[rule]
    names = [name for name, _ in check(turns, media)]
    assert rule in names, names


def test_every_rule_has_a_bad_example():
    assert set(BAD) == set(RULES)


def test_ordinary_samples_pass_every_rule():
    for text in prose_chunks()[:60]:
        assert check(conv("Explain this topic.", text)) == []
    assert check(conv("<image>\nHow many bars?", "Three."), IMAGE) == []
    table = "| a | b |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |\n| 5 | 6 |"
    assert check(conv("Make a table.", table)) == []
    assert check(conv("Is it?", "Yes.")) == []


def test_thresholds_come_from_the_recipe_config():
    cfg = FilterConfig(max_zero_run=50, min_answer_chars=5, max_duplicate_line_ratio=0.9)
    t = HeuristicThresholds.from_config(cfg)
    assert (t.max_zero_run, t.min_answer_chars, t.max_duplicate_line_ratio) == (50, 5, 0.9)
    turns, _ = BAD["zero_run"]
    assert check(turns, [], t) == []
    assert [n for n, _ in check(conv("Is it?", "Yes."), [], t)] == ["empty_answer"]
    detail = dict(check(*BAD["zero_run"]))["zero_run"]
    assert "40 zeros" in detail and "max_zero_run=32" in detail


# ------------------------------------------------------------------------------ Chinese and mixed
def rules_of(q, a, media=(), t=HeuristicThresholds()):
    return [name for name, _ in check(conv(q, a), list(media), t)]


def test_ordinary_chinese_and_mixed_answers_pass_every_rule():
    from tests.filters.test_repetition import ZH_CLEAN

    for text in ZH_CLEAN:
        assert rules_of("请介绍一下。", text) == [], text[:20]
    assert rules_of("<image>\n图中哪根柱子最高？", "B 柱最高，数值是 87。", IMAGE) == []
    assert rules_of("这样对吗？", "对。") == []
    long_but_punctuated = "。".join(ZH_CLEAN * 4)  # about 1,000 characters in short sentences
    assert rules_of("请详细说明。", long_but_punctuated) == []


def test_chinese_run_on_sentence_is_counted_in_characters():
    run_on = "这个模型在每一个数据集上都表现得非常好而且速度很快" * 20  # 500 characters, no punctuation
    assert len(run_on.split()) == 1  # as whitespace words it is one word: the old count missed it
    assert rules_of("总结一下。", run_on) == ["abnormal_sentence_length"]
    detail = dict(check(conv("总结一下。", run_on)))["abnormal_sentence_length"]
    assert "500-character sentence" in detail and "max_sentence_chars_cjk=450" in detail
    # the same characters cut into sentences by 。！？；… are fine
    cut = "；".join(run_on[i:i + 60] for i in range(0, len(run_on), 60))
    assert rules_of("总结一下。", cut) == []
    # the threshold comes from the recipe
    t = HeuristicThresholds.from_config(FilterConfig(max_sentence_chars_cjk=500))
    assert rules_of("总结一下。", run_on, t=t) == []


def test_mixed_sentences_count_latin_words_as_one_unit_each():
    mixed = "我们把 batch size 设为 32 并且 " * 45  # each repeat: 7 CJK characters + 3 words/numbers
    t = HeuristicThresholds(max_sentence_chars_cjk=400)
    assert rules_of("怎么设置？", mixed, t=t) == ["abnormal_sentence_length"]
    assert rules_of("怎么设置？", mixed, t=HeuristicThresholds(max_sentence_chars_cjk=450)) == []
    # an English sentence inside a Chinese answer is held to max_sentence_words
    english = "下面是原文。" + " ".join(["word"] * 320) + "."
    assert rules_of("原文是什么？", english) == ["abnormal_sentence_length"]
    assert "320-word sentence" in dict(check(conv("原文是什么？", english)))["abnormal_sentence_length"]


def test_english_sentence_length_is_unchanged():
    assert rules_of("Summarise.", " ".join(["word"] * 300)) == []
    assert rules_of("Summarise.", " ".join(["word"] * 301)) == ["abnormal_sentence_length"]
    # a 1,000-character English sentence of 150 words is not a CJK sentence
    assert rules_of("Summarise.", " ".join(["abcdef"] * 150)) == []


def test_trivial_answers_in_both_scripts():
    for answer in ("……", "？！", "。。。", "——", "?!"):
        assert "trivial_answer" in rules_of("你好吗？", answer), answer
    for answer in ("是。", "好的！", "OK。", "3。"):
        assert "trivial_answer" not in rules_of("你好吗？", answer), answer


def test_chinese_answer_equal_to_its_question_ignores_spaces_and_punctuation():
    q = "<image>\n图中的汽车是什么颜色？"
    for answer in ("图中的汽车是什么颜色？", "图中的汽车是什么颜色。",
                   "图中的 汽车 是 什么颜色", "图中的汽车是什么颜色"):
        assert "answer_equals_question" in rules_of(q, answer, IMAGE), answer
    assert "answer_equals_question" not in rules_of(q, "红色。", IMAGE)
    assert "answer_equals_question" not in rules_of(q, "图中的汽车是红色。", IMAGE)
    mixed = "<image>\nInternVL 的输入分辨率是多少？"
    assert "answer_equals_question" in rules_of(mixed, "internvl的输入分辨率是多少。", IMAGE)
    assert "answer_equals_question" not in rules_of(mixed, "448 像素。", IMAGE)
    # English keeps its rule: case and spaces ignored, punctuation not
    assert "answer_equals_question" in rules_of("What colour is the car?", "what colour is  the car?")
    assert "answer_equals_question" not in rules_of("What colour is the car?", "What colour is the car.")
