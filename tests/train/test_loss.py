"""Loss weighting and the M2-omni balance, against numbers computed by hand from the papers' equations."""

import math

import pytest
import torch

from train.loss import DynamicBalance, dynamic_balance_weights, step_balance_weights, token_losses, token_weights


def test_step_balance_matches_hand_computation():
    # L* = {text: 2, image: 1}: 1/L = 0.5, 1.0; sum 1.5; w = 10 * (0.5/1.5, 1/1.5)
    w = step_balance_weights({"text": 2.0, "image": 1.0}, alpha=10.0)
    assert w["text"] == pytest.approx(10 / 3) and w["image"] == pytest.approx(20 / 3)
    with pytest.raises(ValueError, match="converged_loss"):
        step_balance_weights({"text": 0.0})


def test_dynamic_balance_matches_hand_computation():
    # H = 3. a: losses 3, 2, 1 -> normalised 1, .5, 0 -> slope -0.5; b: flat -> slope 0.
    # a~ = 2 * (-0.5, 0) / 0.5 = (-2, 0); softmax(a~) = (0.119203, 0.880797)
    # s = (0.119203 * 2, 0) = (0.238406, 0); w = 2 * softmax(s) = (1.118640, 0.881360)
    w = dynamic_balance_weights({"a": [3.0, 2.0, 1.0], "b": [1.0, 1.0, 1.0]}, window=3, f=1.0)
    assert w["a"] == pytest.approx(1.118640, abs=1e-5) and w["b"] == pytest.approx(0.881360, abs=1e-5)
    # f = 2 sharpens: 2 * softmax((0.476812, 0))
    w2 = dynamic_balance_weights({"a": [3.0, 2.0, 1.0], "b": [1.0, 1.0, 1.0]}, window=3, f=2.0)
    e = math.exp(0.476812)
    assert w2["a"] == pytest.approx(2 * e / (e + 1), abs=1e-5)


def test_dynamic_balance_is_one_for_h_segments_then_ema():
    bal = DynamicBalance(["a", "b"], window=3, f=1.0)
    for loss_a in (3.0, 2.0, 1.0):
        assert bal.update({"a": loss_a, "b": 1.0}) == {"a": 1.0, "b": 1.0}
    # 4th segment: window (2, 1, 0) for a -> same raw weights as above; EMA 0.9 * 1 + 0.1 * raw
    w = bal.update({"a": 0.0, "b": 1.0})
    assert w["a"] == pytest.approx(0.9 + 0.1 * 1.118640, abs=1e-5)
    assert w["b"] == pytest.approx(0.9 + 0.1 * 0.881360, abs=1e-5)


def test_square_token_and_sample_averaging_weights():
    samples = [{"token_offset": 0, "n_tokens": 6}, {"token_offset": 6, "n_tokens": 3}]
    labels = torch.tensor([-100, -100, 5, 6, 7, 8, -100, 9, 10])  # sample 1: 4 trained, sample 2: 2
    assert token_weights(samples, labels, "square").tolist() == pytest.approx([0, 0, .5, .5, .5, .5, 0, 2**-.5, 2**-.5])
    assert token_weights(samples, labels, "token").tolist() == [0, 0, 1, 1, 1, 1, 0, 1, 1]
    assert token_weights(samples, labels, "sample").tolist() == pytest.approx([0, 0, .25, .25, .25, .25, 0, .5, .5])


def test_first_token_of_a_sample_is_not_predicted_from_the_previous_sample():
    logits = torch.randn(6, 11)
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    ce = token_losses(logits, labels, torch.tensor([0, 3, 6]))
    assert ce[0] == 0 and ce[3] == 0 and ce[1] > 0 and ce[4] > 0
    expect = torch.nn.functional.cross_entropy(logits[1:2], labels[2:3])
    assert ce[2] == pytest.approx(float(expect), rel=1e-5)


def test_packed_dataset_loss_weight_is_what_the_training_loss_uses(tmp_path):
    """One packed sequence read by PackedDataset: its `loss_weight` is the weight the loop's loss
    applies (token_weights, and the weight sums sequence_loss returns). A sample whose first token
    carries a label shows the rule: that label is predicted from the previous sample's position,
    so it is never trained and not counted in x (3 trained tokens, not 4)."""
    import contextlib

    from packing.format import IGNORE
    from packing.loader import PackedDataset
    from packing.shards import pack_sequence, write_shard
    from train.loop import sequence_loss

    def sample(i, ids, labels, modality):
        return {"id": f"s{i}", "source": "x", "modality": modality, "input_ids": ids, "labels": labels,
                "n_tiles": 0, "n_response_tokens": sum(lab != IGNORE for lab in labels), "media": []}

    samples = [sample(0, [1, 2, 3, 4], [1, 2, 3, 4], "text"), sample(1, [5, 6, 7], [IGNORE, 6, 7], "audio")]
    write_shard(tmp_path / "shard-000000.tar", [pack_sequence("k0", 0, samples)])
    [seq] = list(PackedDataset(tmp_path, rank=0, world_size=1, decode=False))
    assert seq["loss_weight"].tolist() == pytest.approx([0, 3**-.5, 3**-.5, 3**-.5, 0, 2**-.5, 2**-.5])
    assert torch.equal(seq["loss_weight"], token_weights(seq["samples"], seq["labels"], "square"))

    logits = torch.randn(7, 11)
    wl, ws = sequence_loss(lambda batch: logits, seq, ["text", "audio"], "square", contextlib.nullcontext)
    ce = token_losses(logits, seq["labels"], seq["cu_seqlens"])
    w = seq["loss_weight"]
    assert ws.tolist() == pytest.approx([float(w[:4].sum()), float(w[4:].sum())])
    assert wl.tolist() == pytest.approx([float((w * ce)[:4].sum()), float((w * ce)[4:].sum())])
