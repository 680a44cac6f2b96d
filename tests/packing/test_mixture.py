"""Mixture: repeat factors are exact in expectation, modality targets are met by unbiased thinning."""

from __future__ import annotations

from packing.mixture import draw_counts, mixture_report


def test_repeat_factors_are_exact_in_expectation():
    n = 20_000
    sources = ["a"] * n + ["b"] * n + ["c"] * n
    counts = draw_counts(sources, ["image"] * (3 * n), {"a": 2.5, "b": 0.3, "c": 1.0}, None, seed=0)
    a, b, c = counts[:n], counts[n:2 * n], counts[2 * n:]
    assert set(a.tolist()) == {2, 3} and abs(a.mean() - 2.5) < 0.02
    assert set(b.tolist()) == {0, 1} and abs(b.mean() - 0.3) < 0.02
    assert (c == 1).all()


def test_same_seed_same_draw_other_seed_other_draw():
    sources = ["a"] * 1000
    mods = ["text"] * 1000
    one = draw_counts(sources, mods, {"a": 1.5}, None, seed=1)
    assert (one == draw_counts(sources, mods, {"a": 1.5}, None, seed=1)).all()
    assert (one != draw_counts(sources, mods, {"a": 1.5}, None, seed=2)).any()


def test_modality_target_thins_only_the_over_represented_modality_without_bias():
    # 6000 text samples from two sources (equal size), 2000 image samples: text is 75%
    sources = ["t1"] * 3000 + ["t2"] * 3000 + ["img"] * 2000
    mods = ["text"] * 6000 + ["image"] * 2000
    counts = draw_counts(sources, mods, {}, {"text": 0.25}, seed=0)
    report = mixture_report(mods, counts, {"text": 0.25})
    assert abs(report["achieved"]["text"] - 0.25) < 0.001 and report["target"] == {"text": 0.25}
    assert (counts[6000:] == 1).all(), "image samples are untouched"
    t1, t2 = counts[:3000].sum(), counts[3000:6000].sum()
    assert abs(t1 - t2) < 0.15 * (t1 + t2), "both text sources thinned alike"
    assert counts.max() <= 1


def test_target_above_the_available_share_invents_nothing():
    mods = ["text"] * 100 + ["image"] * 900
    counts = draw_counts(["s"] * 1000, mods, {}, {"text": 0.25}, seed=0)
    assert (counts == 1).all()
