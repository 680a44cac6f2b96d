"""`curate ablate` end to end on a tiny random model and a tiny corpus: two arms of
stages.filter.repetition, the second re-running only the filter and the stages after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sft-smollm2.yaml"
pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from curate.demo import build_tiny_models, build_tokenizer, prose_topics

    out = tmp_path_factory.mktemp("ablate")
    topics = prose_topics(40)
    build_tokenizer(out / "tokenizer", [body for _, body in topics], vocab_size=600)
    build_tiny_models(out / "models", out / "tokenizer")
    rows = [{"id": f"t{k}", "conversations": [{"from": "human", "value": f"Explain the Python topic '{name}'."},
                                              {"from": "gpt", "value": body[:600]}]}
            for k, (name, body) in enumerate(topics[:30])]
    for k in (3, 11, 19):  # looping answers the repetition filter removes
        rows[k]["conversations"][1]["value"] = body_loop = "A list keeps its order. " * 30
        assert body_loop
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [{"id": f"p{k}", "conversations": [{"from": "human", "value": f"Explain the Python topic '{n}'."},
                                                 {"from": "gpt", "value": b[:200]}]}
               for k, (n, b) in enumerate(topics[30:33])]
    (out / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return out


def test_ablate_shares_untouched_stages_and_writes_the_comparison(tiny, ray_session):
    m = tiny / "models"
    sets = [f"stages.tokenize.tokenizer={tiny}/tokenizer", f"train.llm={m}/llm", f"train.vision={m}/vision",
            f"train.audio={m}/audio", "train.lr=3e-3", "stages.pack.max_tokens=512", "stages.shard.max_sequences=4"]
    out = tiny / "abl"
    res = CliRunner().invoke(main, ["ablate", str(RECIPE), "--input", str(tiny / "train.jsonl"),
                                    "--vary", "stages.filter.repetition=true,false", "--out", str(out),
                                    "--eval-prompts", str(tiny / "heldout.jsonl"), "--steps", "2", "--seeds", "2",
                                    "--max-new-tokens", "8", *[x for s in sets for x in ("--set", s)]])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "ablation.json").read_text())
    assert result["key"] == "stages.filter.repetition"
    arms = {(a["value"], a["seed"]): a for a in result["arms"]}
    assert set(arms) == {("true", 42), ("true", 43), ("false", 42), ("false", 43)}
    on, off = arms["true", 42], arms["false", 42]
    for a in result["arms"]:
        assert set(a) >= {"value", "seed", "samples", "tokens", "heldout_loss", "looping_share", "distinct_2",
                          "mean_length"}
        assert a["heldout_loss"] > 0 and 0 <= a["looping_share"] <= 1 and 0 < a["mean_length"] <= 8
    # the first arm ran every stage; the second shared those before the filter and re-ran the rest
    assert on["stages_shared"] == [] and on["stages_ran"][0] == "ingest"
    k = on["stages_ran"].index("filter")
    assert off["stages_shared"] == on["stages_ran"][:k] and off["stages_ran"] == on["stages_ran"][k:]
    assert k >= 1 and (out / "arm-false" / "work").is_dir()
    # the filter removed the three looping conversations, so the arms trained on different data
    assert off["samples"] - on["samples"] == 3 and off["tokens"] > on["tokens"]
    assert arms["true", 43]["samples"] == on["samples"]
    diffs = {(d["value"], d["measure"]) for d in result["differences"]}
    assert ("false", "looping_share") in diffs and ("untuned", "heldout_loss") in diffs
    assert result["reference"]["value"] == "untuned"
    gens = (out / "arm-true" / "generations-seed42.jsonl").read_text().splitlines()
    assert len(gens) == 3 and {"output", "loops", "heldout_loss"} <= set(json.loads(gens[0]))
    assert "looping_share" in (out / "table.txt").read_text() and "looping_share" in res.output
