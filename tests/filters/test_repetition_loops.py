"""The signals for loops a real model writes (char_tail_units, counter_run, near_copy_units):
hand-written cases of each kind, and the look-alikes that must pass - a numbered list, a short
count, a table with repeated column values, a poem's refrain, code with similar lines."""

from __future__ import annotations

import pytest

from filters.repetition import (
    Thresholds,
    char_tail_units,
    counter_run,
    fired,
    is_repetitive,
    near_copy_units,
    repetition_signals,
    repetition_signals_batch,
)
from tests.filters.test_repetition_paths import assert_same

INTRO = ("To set up the project, install the package with pip and create a configuration file in your "
         "home folder. The file names the data folder and the model to load.\n\n")

# ------------------------------------------------------------------------------ loops
GLUED = {
    "identifier": INTRO + "The class is called " + "UserAccountManager" * 20,
    "css_class": INTRO + '<div class="gradient-background' + "-backgroundcolor" * 25,
    "no_spaces": INTRO + "Answer: " + "yesnomaybe" * 20,
}
COUNTERS = {
    "brackets": INTRO + "Here are the references: " + " ".join(f"[{i}]" for i in range(1, 70)),
    "steps": INTRO + "\n".join(f"Step {i}: Add one cup of water to the bowl." for i in range(3, 22)),
    "cut_by_the_budget": INTRO + ", ".join(f"item {i} (page {10 * i})" for i in range(1, 40)) + ", item 4",
}
NEAR_COPIES = {
    "paragraphs": INTRO + "\n\n".join(
        f"I'm here to help you {verb} wireless technologies and their applications. I'll share information "
        f"about wireless technologies and their benefits, as well as their {tail}."
        for verb, tail in [("learn", "limitations"), ("explore", "costs"), ("understand", "limitations"),
                           ("learn about", "limits"), ("explore", "limitations")]),
    "ordinals": INTRO + " ".join(
        f"The {o} thing to do is to open the settings page and check that the option is enabled."
        for o in ["first", "second", "third", "fourth", "fifth", "sixth"]),
    "menu": INTRO + "\n\n".join(
        f"Please choose an option (page {page} of 4):\n1. Show my account balance\n2. Transfer money to a "
        "friend\n3. Talk to an agent about a problem\n4. Quit" for page in range(1, 5)),
    "sentence_group_cut": INTRO + " ".join(
        f"The weather in {c} is mild in spring. Many visitors come to see the old town and the river."
        for c in ["Paris", "Lyon", "Nice", "Lille"]) + " The weather in",
}

# ------------------------------------------------------------------------------ look-alikes
NUMBERED_LIST = INTRO + "\n".join(f"{i}. {s}" for i, s in enumerate([
    "Install Python 3.11 from the official site.", "Create a virtual environment in the project folder.",
    "Activate it and upgrade pip.", "Install the requirements with pip install -r requirements.txt.",
    "Copy the example configuration and edit the paths.", "Run the tests to check the setup.",
    "Start the server with make run.", "Open http://localhost:8000 in your browser."], 1))
SHORT_COUNT = "Sure, here is a count to ten: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10."
NUMBERED_YES = "Answers to the quiz:\n" + "\n".join(f"{i}. Yes" for i in range(1, 9))
TABLE = "| fruit | colour | taste | in season |\n| --- | --- | --- | --- |\n" + "\n".join(
    f"| {f} | {c} | sweet | yes |" for f, c in [("apple", "red"), ("cherry", "red"), ("banana", "yellow"),
                                               ("lemon", "yellow"), ("plum", "purple"), ("grape", "purple"),
                                               ("pear", "green"), ("kiwi", "green")])
POEM = """The river runs beneath the hill,
The morning light is soft and still,
And every stone remembers rain.
Come home, come home, come home again.

The swallows wheel above the barn,
The old dog sleeps beside the yarn,
The harvest waits along the lane.
Come home, come home, come home again.

The lamps are lit in every room,
The kettle hums against the gloom,
The window wears a frosted pane.
Come home, come home, come home again."""
CODE = """def test_parse_numbers(self):
    self.assertEqual(parse("1"), 1)
    self.assertEqual(parse("12"), 12)
    self.assertEqual(parse("123"), 123)
    self.assertEqual(parse("1234"), 1234)
    self.assertEqual(parse("-5"), -5)
    self.assertEqual(parse("0"), 0)

CONFIG = {
    "layer_1": {"units": 64, "dropout": 0.1},
    "layer_2": {"units": 128, "dropout": 0.1},
    "layer_3": {"units": 256, "dropout": 0.2},
    "layer_4": {"units": 512, "dropout": 0.2},
}"""
LOOK_ALIKES = {"numbered_list": NUMBERED_LIST, "short_count": SHORT_COUNT, "numbered_yes": NUMBERED_YES,
               "table": TABLE, "poem_refrain": POEM, "similar_code": CODE}


@pytest.mark.parametrize("name", sorted(GLUED))
def test_a_loop_glued_into_one_word_is_caught(name):
    text = GLUED[name]
    assert char_tail_units(text) >= Thresholds().char_tail_units
    assert "char_tail_units" in fired(repetition_signals(text)) and is_repetitive(text)


@pytest.mark.parametrize("name", sorted(COUNTERS))
def test_a_counter_running_to_the_end_is_caught(name):
    text = COUNTERS[name]
    assert counter_run(text) >= Thresholds().counter_run
    assert "counter_run" in fired(repetition_signals(text)) and is_repetitive(text)


@pytest.mark.parametrize("name", sorted(NEAR_COPIES))
def test_near_copies_of_a_block_at_the_end_are_caught(name):
    text = NEAR_COPIES[name]
    assert near_copy_units(text) >= Thresholds().near_copy_units
    assert "near_copy_units" in fired(repetition_signals(text)) and is_repetitive(text)


@pytest.mark.parametrize("name", sorted(LOOK_ALIKES))
def test_look_alikes_pass(name):
    sig = repetition_signals(LOOK_ALIKES[name])
    assert sig["score"] < 0.5, fired(sig)


def test_the_signals_read_what_they_say():
    # a glued loop needs a unit without spaces; text with spaces is the token signals' job
    assert char_tail_units(INTRO + "It is done. " * 10) == 0.0
    assert char_tail_units("abc" * 30) == 30.0 and char_tail_units("abc" * 30 + "\n\n ") == 30.0
    assert char_tail_units("ab" * 20) == 0.0  # under loop_min_chars (char_run's job)
    # a counter must hold the last number: a count followed by other numbers is not a run at the end
    assert counter_run(" ".join(f"[{i}]" for i in range(1, 40)) + " Call 555 0199 or 555 0142.") == 0.0
    assert counter_run("[3] [5] [7] [9] [11]") == 5.0  # any fixed step
    assert counter_run("x 5 x 5 x 5 x 5 x 5 x 5") == 0.0  # the same number again is a copy, not a count
    assert counter_run("Item 1: $10 Item 2: $10 Item 3: $10") == 6.0  # one position counts, one stays
    assert counter_run("1. apples\n2. pears\n3. plums\n4. figs") == 0.0  # other text after each number
    # two units of a near copy are not a loop; the segments must also span near_copy_min_chars
    twice = " ".join(f"The weather in {c} is mild in spring, and the old town is busy with visitors all day."
                     for c in ("Paris", "Lyon"))
    assert near_copy_units(INTRO + twice) == 2.0
    assert near_copy_units("It is done, and it is over. " * 6) == 0.0
    # a complete exact loop is the periodic signals' job; cut by the budget it counts here too
    same = " ".join(["The weather in Paris is mild in spring, and the old town is busy all day long."] * 4)
    assert near_copy_units(INTRO + same) == 0.0 and near_copy_units(INTRO + same + " The weather in") == 5.0


def test_new_thresholds_from_recipe_options():
    text = COUNTERS["steps"]
    assert is_repetitive(text)
    loose = Thresholds.from_options({"repetition.counter_run": 100, "repetition.near_copy_units": 100,
                                     "repetition.dup_line_ratio": 1, "repetition.ngram_coverage": 1})
    assert not is_repetitive(text, loose), fired(repetition_signals(text, loose))


def test_batch_path_gives_the_full_measurement():
    """The batch's cheap checks (a character loop or a counting run may end the text) skip
    only texts where the signal is 0: every case here, and counters cut anywhere."""
    texts = [x for cases in (GLUED, COUNTERS, NEAR_COPIES, LOOK_ALIKES) for x in cases.values()]
    texts += ["abc" * 30 + " ", "x" * 5, "", "é" + "abc" * 30, "7" * 40 + " 1 2 3"]
    texts += ["1 2 3 " + "9" * 25 + " 4"]
    count = " ".join(f"[{i}]" for i in range(95, 130))
    texts += [count[:cut] for cut in range(0, len(count), 7)]
    texts += [count[-cut:] for cut in range(1, len(count), 11)]
    assert sum(repetition_signals(x)["counter_run_s"] > 0 for x in texts) > 20
    assert_same(texts, Thresholds())
    assert repetition_signals_batch(texts) == [repetition_signals(x) for x in texts]
