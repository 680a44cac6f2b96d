"""The real LLM of recipes/sft-smollm2.yaml: the folder `make setup` writes from the SmolLM2 GGUF
(curate.paths.build_smollm2) holds the media tokens, and packed logits equal per-sample logits
with its real rotary positions and heads (verify-packing). Skipped when setup has not built it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.paths import smollm2_path
from packing.format import SPECIAL_TOKENS
from tests.train.conftest import tiny_samples, write_run

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-smollm2.yaml"
FOLDER = smollm2_path()
pytestmark = pytest.mark.skipif(not (FOLDER / "config.json").is_file(),
                                reason=f"{FOLDER} missing: run `make setup` (python -m curate.paths --check)")


def test_tokenizer_has_the_media_tokens_and_the_model_their_rows():
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FOLDER))
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert tok.unk_token_id not in ids and len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.tokenize("<|im_start|>user\n<img><IMG_CONTEXT></img>") == ["<|im_start|>", "user", "Ċ", "<img>",
                                                                          "<IMG_CONTEXT>", "</img>"]
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["vocab_size"] == len(tok) > max(ids) and config["model_type"] == "llama"


@pytest.mark.slow
def test_verify_packing_passes_with_smollm2(tiny_assets, tmp_path):
    run = write_run(tmp_path, tiny_samples(tmp_path, FOLDER, 3))  # text, image and audio in one sequence
    m = tiny_assets / "models"
    sets = [f"train.vision={m}/vision", f"train.audio={m}/audio"]
    res = CliRunner().invoke(main, ["verify-packing", str(RECIPE), "--shards", str(run), "--sequences", "1",
                                    *[x for s in sets for x in ("--set", s)]])
    assert res.exit_code == 0, res.output
    assert "3 samples" in res.output and "ok:" in res.output
    bad = CliRunner().invoke(main, ["verify-packing", str(RECIPE), "--shards", str(run), "--sequences", "1",
                                    "--unmasked", *[x for s in sets for x in ("--set", s)]])
    assert bad.exit_code == 1, bad.output
