"""`curate ablate`'s measures: the looping rule on hand-written loops and non-loops, distinct-2,
the bootstrap interval, --vary parsing (the pipeline end to end is tests/test_ablate_pipeline.py)."""

from __future__ import annotations

import re

import pytest

from curate.ablate import bootstrap_difference, distinct_2, loops, parse_vary, tail_repeat_share

VOCAB: dict[str, int] = {}


def ids(text: str) -> list[int]:
    """Word and punctuation tokens as ids (the rule reads token ids, whatever the tokenizer)."""
    return [VOCAB.setdefault(t, len(VOCAB)) for t in re.findall(r"\w+|[^\w\s]|\n", text)]


INTRO = ("Python lists keep their items in order and can grow as you append to them, which makes them "
         "the usual choice for a sequence whose length is not known in advance. ")
LOOPS = {
    "repeated sentence": INTRO + "The list is the most useful data structure in Python. " * 8,
    "repeated paragraph": INTRO + ("First, create the list. Then append each item in a loop. Finally, sort the "
                                   "list and print it to check the order.\n\n") * 4,
    "degenerate tail": INTRO + "In short, lists are " + "the the the the " * 12,
    "two alternating statements": INTRO + "It is fast. It is simple. " * 10,
    "counting loop": INTRO + " ".join(f"Step {k}: append the item." for k in range(1, 3)) +
                     " Step 3: append the item. Step 3: append the item. Step 3: append the item." * 3,
}
NOT_LOOPS = {
    "prose": ("The French Revolution began in 1789 with the storming of the Bastille. It ended the absolute "
              "monarchy, proclaimed the rights of man, and led, after years of war and terror, to the rise of "
              "Napoleon, whose code of laws still shapes the civil law of many countries today. Historians "
              "still argue about its causes: debt, bread prices, new ideas and a weak king all played a part."),
    "numbered list": "Here are some fruits:\n" + "\n".join(
        f"{k}. **{name}**: {desc}" for k, (name, desc) in enumerate([
            ("Apple", "crisp and sweet, grown in cool climates"), ("Banana", "soft, rich in potassium"),
            ("Cherry", "small stone fruit, red or black"), ("Mango", "tropical, with a large flat seed"),
            ("Orange", "citrus with a thick peel and juicy segments"), ("Pear", "grainy flesh, ripens off the tree"),
        ], 1)),
    "code": "def area(shape):\n    if shape.kind == 'square':\n        return shape.side ** 2\n"
            "    if shape.kind == 'circle':\n        return 3.14159 * shape.radius ** 2\n"
            "    if shape.kind == 'rectangle':\n        return shape.width * shape.height\n"
            "    raise ValueError(f'unknown shape {shape.kind}')",
    "phrase said twice": INTRO + "As noted above, the order is kept. Sorting changes it in place, while sorted() "
                         "returns a new list and leaves the old one alone. As noted above, the order is kept.",
    "short repeated answer": "Yes. Yes. Yes.",
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_loops_are_found(name):
    assert loops(ids(LOOPS[name])), (name, tail_repeat_share(ids(LOOPS[name])))


@pytest.mark.parametrize("name", sorted(NOT_LOOPS))
def test_ordinary_answers_do_not_loop(name):
    assert not loops(ids(NOT_LOOPS[name])), (name, tail_repeat_share(ids(NOT_LOOPS[name])))


def test_tail_share_separates_the_cases():
    assert min(tail_repeat_share(ids(t)) for t in LOOPS.values()) >= 0.6
    assert max(tail_repeat_share(ids(t)) for t in NOT_LOOPS.values()) < 0.3


def test_distinct_2():
    assert distinct_2([1, 2, 3, 4]) == 1.0
    assert distinct_2([1, 2, 1, 2, 1]) == pytest.approx(2 / 4)
    assert distinct_2([7]) is None


def test_bootstrap_interval_covers_the_difference_and_skips_missing():
    a = [1.0] * 30 + [0.0] * 10
    b = [0.0] * 40
    d = bootstrap_difference(a, b)
    assert d["difference"] == pytest.approx(0.75)
    assert d["ci95"][0] < 0.75 < d["ci95"][1] and d["ci95"][0] > 0.5
    same = bootstrap_difference([0.5, None, 0.5], [0.5, 0.2, 0.5])
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["prompts"] == 2


def test_parse_vary():
    assert parse_vary("stages.filter.repetition=true,false") == ("stages.filter.repetition", ["true", "false"])
    assert parse_vary("stages.dedupe.threshold=0.7, 0.9") == ("stages.dedupe.threshold", ["0.7", "0.9"])
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        parse_vary("stages.filter.repetition")


# ---------------------------------------------------------------------------- make ablate's corpus and report
ANSWER = ("Photosynthesis turns light into chemical energy. Plants take in carbon dioxide through their "
          "leaves and water through their roots. Chlorophyll absorbs mostly red and blue light, which is why "
          "leaves look green.\n\nThe light reactions split water and release oxygen. The Calvin cycle then "
          "fixes carbon into sugars that the plant uses to grow and to store energy for the night.")


@pytest.mark.parametrize("kind", ["repeated_sentence", "repeated_paragraph", "degenerate_tail"])
def test_made_loops_loop_and_the_repetition_filter_catches_them(kind):
    from curate.ablate_data import LOOP_CHARS, make_loop
    from filters.repetition import is_repetitive

    looped = make_loop(ANSWER, kind)
    assert looped.startswith(ANSWER[:40]) and abs(len(looped) - LOOP_CHARS) < 400
    assert loops(ids(looped)) and is_repetitive(looped)
    assert not loops(ids(ANSWER)) and not is_repetitive(ANSWER)


def _write_arm(folder, seeds, answers):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        rows = [{"id": str(i), "output_ids": a, "n_tokens": len(a), "loops": loops(a)} for i, a in enumerate(answers)]
        (folder / (f"generations-seed{seed}.jsonl" if seed is not None else "generations-untuned.jsonl")).write_text(
            "".join(json.dumps(r) + "\n" for r in rows))


def test_report_reads_the_experiment_and_cuts_answers_to_shorter_budgets(tmp_path):
    import json

    from curate.ablate_data import report

    varied = list(range(1000, 1100))
    late_loop = varied[:80] + [1, 2, 3, 4, 5, 6] * 7  # 122 tokens: loops only after the first 64
    early_loop = varied[:10] + [7, 8, 9, 10, 11] * 10
    clean = varied[:96]
    k = tmp_path / "k0.05"
    _write_arm(k / "arm-true", [42, 43], [clean] * 4)
    _write_arm(k / "arm-false", [42, 43], [late_loop, late_loop, early_loop, clean])
    _write_arm(tmp_path / "k0" / "arm-true", [42, 43], [clean, clean, clean, early_loop])
    _write_arm(k, [None], [clean, early_loop, clean, clean])
    base = {"key": "stages.filter.repetition", "steps": 2, "seeds": [42, 43], "prompts": 4, "max_new_tokens": 128,
            "arms": [], "differences": [], "reference": None}
    (k / "ablation.json").write_text(json.dumps(base))
    (tmp_path / "k0" / "ablation.json").write_text(json.dumps(base))

    summary, lines = report(tmp_path, 0.05)
    share = {n: v["mean"] for n, v in summary["looping_share"].items()}
    assert share == {"on": 0.0, "off": 0.75, "k0": 0.25, "untuned": 0.25}
    assert summary["looping_share_by_length"]["off"] == {"64": 0.25, "128": 0.75}
    assert summary["goal_met"] is True  # on 0 <= 0.375, and inside k=0's interval, which reaches 0
    assert (tmp_path / "table.txt").read_text() == "\n".join(lines) + "\n"
    assert "  k=0.05, filter off   0.750  [0.250, 1.000]" in lines
