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
