"""pack_2d: every item placed once, both budgets held, close to the lower bound, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from packing import pack_2d
from packing.baselines import first_fit, internvl_buffer
from packing.pack2d import lower_bound, pack_2d_stream
from tests.workloads import MIXES, make_workload

BUDGETS = [(16384, 48), (8192, 24)]


def assert_valid(bins, items, max_tokens, max_tiles):
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(items))), "every item exactly once"
    for b in bins:
        assert b, "no empty bins"
        assert sum(items[i][0] for i in b) <= max_tokens
        assert sum(items[i][1] for i in b) <= max_tiles


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("budget", BUDGETS)
def test_valid_on_every_mix(mix, budget):
    for seed in range(5):
        items = make_workload(mix, 300 + 97 * seed, *budget, seed=seed)
        assert_valid(pack_2d(items, *budget), items, *budget)


def test_valid_on_adversarial_sizes():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 80))
        tok = rng.integers(0, 101, n)
        til = rng.integers(0, 7, n)
        items = list(zip(tok.tolist(), til.tolist()))
        assert_valid(pack_2d(items, 100, 6), items, 100, 6)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_close_to_lower_bound_and_better_than_baselines(mix):
    items = make_workload(mix, 5000, 16384, 48, seed=11)
    bins = pack_2d(items, 16384, 48)
    lb = lower_bound(items, 16384, 48)
    assert len(bins) <= 1.02 * lb + 1
    assert len(bins) <= len(internvl_buffer(items, 16384, 48))
    assert len(bins) <= len(first_fit(items, 16384, 48))


def test_lower_bound_is_exact_on_a_perfect_instance():
    # 40 items of (4096, 12): exactly 4 per bin in both budgets -> 10 bins, no slack
    items = [(4096, 12)] * 40
    bins = pack_2d(items, 16384, 48)
    assert len(bins) == lower_bound(items, 16384, 48) == 10


def test_pairs_tile_heavy_with_token_heavy_items():
    # 10 items full on tiles but light on tokens, 10 text items full on tokens minus a bit:
    # a 1D packer on either budget alone needs 20 bins, pairing needs 10
    items = [(1000, 48)] * 10 + [(15000, 0)] * 10
    bins = pack_2d(items, 16384, 48)
    assert len(bins) == 10
    assert all(sorted(items[i][1] for i in b) == [0, 48] for b in bins)


def test_deterministic_and_input_types():
    items = make_workload("image-heavy", 2000, 16384, 48, seed=5)
    a = pack_2d(items, 16384, 48)
    assert a == pack_2d(list(items), 16384, 48)
    assert a == pack_2d(np.asarray(items), 16384, 48)


def test_errors_name_the_item():
    with pytest.raises(ValueError, match=r"item 2 \(20000 tokens, 1 tiles\) exceeds the budget"):
        pack_2d([(10, 0), (10, 1), (20000, 1)], 16384, 48)
    with pytest.raises(ValueError, match="item 0 .* exceeds"):
        pack_2d([(10, 49)], 16384, 48)
    with pytest.raises(ValueError, match="negative"):
        pack_2d([(-1, 0)], 16384, 48)
    with pytest.raises(TypeError, match="unknown pack_2d options"):
        pack_2d([(1, 0)], 16384, 48, buffer=20)
    assert pack_2d([], 16384, 48) == []


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_streaming_mode_holds_budgets_and_quality(mix):
    items = make_workload(mix, 6000, 16384, 48, seed=2)
    bins = list(pack_2d_stream(iter(items), 16384, 48, window=1000))
    assert_valid(bins, items, 16384, 48)
    assert len(bins) <= 1.02 * lower_bound(items, 16384, 48) + 1


def test_streaming_error_uses_the_global_index():
    items = [(10, 0)] * 1500 + [(10, 99)]
    with pytest.raises(ValueError, match=r"item 1500 \(10 tokens, 99 tiles\) exceeds"):
        list(pack_2d_stream(iter(items), 16384, 48, window=1000))
