"""Scoring benchmark: samples/s of the CPU transformers back-end with a tiny random Qwen2.

The model (2 layers, hidden 64) is built from a config, saved and loaded back through
`from_pretrained`, as a real local checkpoint would be. Compared in the same run: the stage
with batch_size 16 against batch_size 1 (one prompt at a time). Each sample costs three
model calls (domain, score, repetition). Real models are far slower; this measures the
stage's own overhead and the effect of batching.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

N = 96


def tiny_model(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from curate.demo import build_tokenizer, prose_topics

    tok_dir = build_tokenizer(folder / "tok", [b for _, b in prose_topics(30)], vocab_size=800)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    path = folder / "model"
    Qwen2ForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def run(model: Path, out: Path, batch_size: int) -> float:
    from curate.demo import prose_topics
    from curate.recipe import ScoreConfig
    from curate.records import CORE_SCHEMA
    from curate.stages.base import RunContext
    from curate.stages.score import ScoreStage

    stage = ScoreStage(ScoreConfig(model=str(model), cache=False, resources={"batch_size": batch_size}),
                       RunContext(out_dir=str(out)))
    stage.validate()
    stage.setup()
    topics = prose_topics(N)
    rows = [{name: None for name in CORE_SCHEMA.names} | {
        "id": f"id{i}", "source": "s", "origin": "manifest", "modality": "text", "domain": "general", "media": [],
        "conversations": [{"from": "human", "value": f"Explain {key}."}, {"from": "gpt", "value": body[:1500]}]}
        for i, (key, body) in enumerate(topics)]
    stage.process_rows([dict(r) for r in rows[:4]])  # warm-up
    t0 = time.perf_counter()
    done = stage.process_rows(rows)
    seconds = time.perf_counter() - t0
    assert all(r["score_status"] for r in done)
    return len(rows) / seconds


def main() -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp))
        base = run(model, Path(tmp) / "b1", 1)
        batched = run(model, Path(tmp) / "b16", 16)
    print(f"{N} text samples (~1.5 KB answers), tiny Qwen2 on CPU, 1 thread, 3 model calls per sample")
    print(f"{'setting':<28} {'samples/s':>10} {'x base':>7}")
    print(f"{'batch_size 1':<28} {base:>10.1f} {1.0:>7.2f}")
    print(f"{'batch_size 16':<28} {batched:>10.1f} {batched / base:>7.2f}")


if __name__ == "__main__":
    main()
