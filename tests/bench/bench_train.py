"""Training throughput: packed sequences vs the same samples padded one per row.

The tiny demo LLM (CPU; on a GPU a Qwen2-0.5B-shaped random model in bf16) trains forward +
backward on the same samples twice: packed into 8192-token sequences with per-sample attention
(train.attention), and one sample per row padded to the longest of a 4-row batch with an
attention mask (plain transformers SDPA). Real (non-pad) tokens per second and the ratio
packed / padded are printed; peak memory of one packed forward + backward too.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def tiny_llm(folder: Path, device: str):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from train.attention import register_packed_attention

    if device == "cuda":  # a 0.5B shape (Qwen2.5-0.5B): hidden 896, 24 layers, 14 heads, 2 KV heads
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768)
    else:
        cfg = Qwen2Config(vocab_size=4000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    packed = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=register_packed_attention(),
                                                  dtype=dtype).to(device)
    padded = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype).to(device)
    return packed, padded, cfg.vocab_size


def pack(lengths: list[int], budget: int) -> list[list[int]]:
    bins, cur, used = [], [], 0
    for i, n in enumerate(lengths):
        if used + n > budget:
            bins.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    return bins + [cur] if cur else bins


def run_packed(model, samples, budget, device) -> tuple[float, int]:
    from train.attention import packed_kwargs

    t0, tokens = time.perf_counter(), 0
    for b in pack([len(s) for s in samples], budget):
        ids = torch.cat([samples[i] for i in b]).to(device)
        cu = torch.tensor([0, *np.cumsum([len(samples[i]) for i in b])], dtype=torch.int32)
        pos = torch.cat([torch.arange(len(samples[i])) for i in b]).to(device)
        out = model(input_ids=ids[None], position_ids=pos[None], labels=ids[None], use_cache=False,
                    **packed_kwargs(cu.to(device)))
        out.loss.backward()
        tokens += len(ids)
    sync(device)
    return time.perf_counter() - t0, tokens


def run_padded(model, samples, rows, device) -> tuple[float, int]:
    t0, tokens = time.perf_counter(), 0
    for k in range(0, len(samples), rows):
        batch = samples[k:k + rows]
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, s in enumerate(batch):
            ids[r, :len(s)], mask[r, :len(s)] = s, 1
        labels = ids.masked_fill(mask == 0, -100)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device),
                    use_cache=False)
        out.loss.backward()
        tokens += int(mask.sum())
    sync(device)
    return time.perf_counter() - t0, tokens


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        packed_model, padded_model, vocab = tiny_llm(Path(tmp) / "llm", device)
    # instruction-data-like lengths: many short answers, a long tail
    lengths = np.clip(rng.lognormal(6.0, 0.8, 96).astype(int), 32, 4096)
    samples = [torch.from_numpy(rng.integers(0, vocab, n)) for n in lengths]
    # warm-up of both paths on every sample (first calls pay for kernel selection and caching
    # allocator growth: on an H200 a cold pass ran 6x slower than a warm one)
    run_packed(packed_model, samples, 8192, device)
    run_padded(padded_model, samples, 4, device)
    tp, np_tok = run_packed(packed_model, samples, 8192, device)
    td, nd_tok = run_padded(padded_model, samples, 4, device)
    print(f"device {device}; {len(samples)} samples, {int(lengths.sum())} tokens (median {int(np.median(lengths))})")
    print(f"{'mode':<26}{'seconds':>9}{'tokens/s':>11}")
    print(f"{'packed 8192, per-sample':<26}{tp:>9.2f}{np_tok / tp:>11.0f}")
    print(f"{'padded, 4 rows/batch':<26}{td:>9.2f}{nd_tok / td:>11.0f}")
    print(f"ratio packed / padded tokens/s: {(np_tok / tp) / (nd_tok / td):.2f}")
    peak_memory(packed_model, vocab, device)


def peak_memory(model, vocab: int, device: str, length: int = 16384) -> None:
    """Peak memory of one forward + backward of a 16384-token packed sequence (16 samples of 1024)."""
    from train.attention import packed_kwargs

    ids = torch.randint(0, vocab, (1, length), device=device)
    cu = torch.arange(0, length + 1, 1024, dtype=torch.int32, device=device)
    pos = (torch.arange(length, device=device) % 1024)[None]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False, **packed_kwargs(cu)).loss.backward()
    if device == "cuda":
        print(f"peak GPU memory, one {length}-token packed step: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        print(f"peak RSS after one {length}-token packed step: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
