"""Model assembly from local folders, media/token count checks, packed attention and verify-packing."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from curate.cli import main
from curate.recipe import load_recipe
from tests.train.conftest import RECIPE, train_overrides
from train.loop import build_model
from train.model import ModelError, pixel_unshuffle
from train.verify import multi_sample_sequences, packing_differences


@pytest.fixture(scope="module")
def model(tiny_assets):
    return build_model(load_recipe(RECIPE, train_overrides(tiny_assets)))


def test_pixel_unshuffle_merges_2x2_neighbours():
    x = torch.arange(16.0).view(1, 16, 1)  # a 4x4 grid, one channel
    out = pixel_unshuffle(x, grid=4)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]


def test_tile_and_clip_embedding_counts(model):
    assert model.encode_tiles(torch.rand(2, 3, 448, 448)).shape == (2 * 256, model.llm.config.hidden_size)
    for seconds in (1.0, 2.5, 35.0):  # 35 s spans two 30 s Whisper windows
        clip = np.random.default_rng(0).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
        assert model.encode_clip(clip, seconds).shape[0] == math.ceil(seconds * 50 / 3)


def test_tokens_per_tile_mismatch_names_both_numbers(tiny_assets):
    rec = load_recipe(RECIPE, train_overrides(tiny_assets, "stages.tokenize.tokens_per_tile=400"))
    with pytest.raises(ModelError, match=r"256 tokens per tile.*tokens_per_tile=400"):
        build_model(rec)


def test_media_count_mismatch_names_the_sample(model, tiny_run):
    batch = multi_sample_sequences(str(tiny_run), 1)[0]
    ids = batch["input_ids"].clone()
    img_sample = next(s for s in batch["samples"] if s["modality"] == "image")
    ids[ids == model.image_token] = 7  # drop every image context token
    with pytest.raises(ModelError, match=f"sample {img_sample['id']}: 0 <IMG_CONTEXT> tokens .* 256 image"):
        model.embed(dict(batch, input_ids=ids))


def test_packed_logits_equal_per_sample_and_unmasked_leaks(model, tiny_run):
    batches = multi_sample_sequences(str(tiny_run), 2)
    packed = packing_differences(model, batches)
    leaked = packing_differences(model, batches, unmasked=True)
    assert max(d for _, _, d in packed) < 1e-4
    assert min(d for _, _, d in leaked) > 1e-2


def test_verify_packing_command(tiny_assets, tiny_run):
    sets = [x for o in train_overrides(tiny_assets) for x in ("--set", o)]
    ok = CliRunner().invoke(main, ["verify-packing", str(RECIPE), "--shards", str(tiny_run), "--sequences", "1", *sets])
    assert ok.exit_code == 0, ok.output
    assert "max |packed - alone|" in ok.output
    bad = CliRunner().invoke(main, ["verify-packing", str(RECIPE), "--shards", str(tiny_run), "--sequences", "1",
                                    "--unmasked", *sets])
    assert bad.exit_code == 1 and "FAIL" in bad.output
