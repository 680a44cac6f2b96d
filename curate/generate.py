"""`curate generate`: answers of a trained (or untouched) LLM to held-out prompts, one JSON line each.

    curate generate runs/x --prompts heldout.jsonl --max-new-tokens 128 > answers.jsonl

SOURCE is a run folder that `curate train` wrote a checkpoint into (RUN/train/latest.pt), a
checkpoint file, or a plain transformers LLM folder (the untuned starting model). A checkpoint
holds the whole omni model; only its `llm.` weights are loaded into the LLM folder named by the
checkpoint's train config, since the prompts are text. The prompts are laid out exactly as the
tokenize stage lays out a training sample (curate.stages.tokenize.ChatEncoder, ChatML turns),
followed by `<|im_start|>assistant\\n`; decoding is greedy unless a temperature is given, and
stops at `<|im_end|>`. Prompts are generated in batches (left padding, attention mask): one
at a time leaves most of a CPU's cores idle.

A prompt line is {"prompt": "..."} or a ShareGPT-style {"conversations": [{"from": "human",
"value": ...}, {"from": "gpt", ...}]}: the prompt is every turn before the last assistant turn,
which (when present) is the reference answer that `heldout_losses` scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from packing.format import IGNORE, IM_END, IM_START


class GenerateError(ValueError):
    """The source or the prompt file is unusable; the message says what to give instead."""


# ---------------------------------------------------------------------------- prompts
def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """[{"id", "turns", "reference"}] from a JSONL file of prompts or conversations."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "conversations" in row:
                turns = [dict(t) for t in row["conversations"]]
                reference = None
                if turns and turns[-1]["from"] == "gpt":
                    reference = turns.pop()["value"]
            elif "prompt" in row:
                turns, reference = [{"from": "human", "value": str(row["prompt"])}], row.get("reference")
            else:
                raise GenerateError(f"{path}:{n}: a prompt line needs a 'prompt' field or 'conversations'")
            if not turns:
                raise GenerateError(f"{path}:{n}: no turn before the answer")
            out.append({"id": str(row.get("id", n)), "turns": turns, "reference": reference})
    if not out:
        raise GenerateError(f"{path}: no prompts")
    return out


def prompt_ids(encoder, turns: list[dict[str, str]]) -> list[int]:
    """The tokens a trained sample has before its answer: the turns, then `<|im_start|>assistant\\n`."""
    ids = encoder.encode({"conversations": turns}).input_ids
    return ids + [encoder.ids[IM_START]] + encoder.encode_text("assistant\n")


# ---------------------------------------------------------------------------- the model
def resolve(source: str | Path) -> dict[str, Any]:
    """{"llm": folder, "checkpoint": path or None, "tokenizer": folder, "system_prompt": str or None}."""
    import yaml

    src = Path(source)
    if src.is_dir() and (src / "config.json").is_file():
        return {"llm": str(src), "checkpoint": None, "tokenizer": str(src), "system_prompt": None}
    ckpt = src / "train" / "latest.pt" if src.is_dir() else src
    if src.is_dir() and not ckpt.is_file():
        ckpt = src / "latest.pt"
    if not ckpt.is_file():
        raise GenerateError(f"{source}: neither an LLM folder (config.json), a checkpoint file, nor a run folder "
                            f"with train/latest.pt (train it first: curate train RECIPE --shards RUN)")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = state.get("config") or {}
    tokenizer, system = cfg.get("llm"), None
    for folder in (ckpt.parent.parent, ckpt.parent):  # RUN/train/latest.pt: the run's resolved recipe
        recipe = folder / "recipe.resolved.yaml"
        if recipe.is_file():
            tok_cfg = (yaml.safe_load(recipe.read_text()).get("stages") or {}).get("tokenize") or {}
            tokenizer, system = tok_cfg.get("tokenizer", tokenizer), tok_cfg.get("system_prompt")
            break
    return {"llm": cfg.get("llm"), "checkpoint": str(ckpt), "tokenizer": tokenizer, "system_prompt": system,
            "state": state}


def load_llm(llm: str | Path, state: dict[str, Any] | None = None, dtype=torch.float32):
    """The causal LM of `llm`, with the `llm.` weights of a training checkpoint when one is given."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not llm or not Path(llm).is_dir():
        raise GenerateError(f"LLM folder {llm} not found")
    lm = AutoModelForCausalLM.from_pretrained(str(llm), dtype=dtype, attn_implementation="sdpa")
    if state is not None:
        weights = {k[len("llm."):]: v for k, v in state["model"].items() if k.startswith("llm.")}
        missing, unexpected = lm.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied head is not stored twice
            raise GenerateError(f"the checkpoint's LLM does not fit {llm}: missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}")
        lm.tie_weights()
    return lm.eval()


class Generator:
    """An LLM, its tokenizer and the training layout of a prompt."""

    def __init__(self, lm, tokenizer: str | Path, system_prompt: str | None = None, device: str = "cpu"):
        from curate.stages.tokenize import ChatEncoder, load_tokenizer

        if hasattr(lm, "set_attn_implementation"):  # a trained LLM runs packed attention, blind to padding
            lm.set_attn_implementation("sdpa")
        self.lm, self.device = lm.to(device).eval(), device
        if not tokenizer or not Path(tokenizer).is_dir():
            raise GenerateError(f"tokenizer folder {tokenizer} not found: pass --tokenizer")
        self.tok = load_tokenizer(str(tokenizer))
        self.encoder = ChatEncoder(self.tok, 256, 50.0, 3, system_prompt)
        self.eos = self.encoder.ids[IM_END]
        pad = self.tok.pad_token_id
        self.pad = self.eos if pad is None else pad

    @classmethod
    def load(cls, source: str | Path, tokenizer: str | None = None, device: str = "cpu") -> "Generator":
        """From a run folder, a checkpoint or an LLM folder (see the module's docstring)."""
        info = resolve(source)
        return cls(load_llm(info["llm"], info.get("state")), tokenizer or info["tokenizer"],
                   info.get("system_prompt"), device)

    @torch.no_grad()
    def generate(self, prompts: list[dict[str, Any]], max_new_tokens: int = 128, batch_size: int = 8,
                 temperature: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
        """One row per prompt, in order: {"id", "prompt", "output", "output_ids", "n_tokens", "stopped"}."""
        encoded = [prompt_ids(self.encoder, p["turns"]) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        rows: list[dict[str, Any] | None] = [None] * len(prompts)
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]):] = 1
            kw = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            out = self.lm.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                   max_new_tokens=max_new_tokens, eos_token_id=self.eos, pad_token_id=self.pad,
                                   top_p=None, top_k=None, **kw)
            for r, i in enumerate(idx):
                new = out[r, width:].tolist()
                stopped = self.eos in new
                new = new[:new.index(self.eos)] if stopped else new
                rows[i] = {"id": prompts[i]["id"], "prompt": prompts[i]["turns"][-1]["value"],
                           "output": self.tok.decode(new, skip_special_tokens=True), "output_ids": new,
                           "n_tokens": len(new), "stopped": stopped}
        return rows  # type: ignore[return-value]

    @torch.no_grad()
    def heldout_losses(self, prompts: list[dict[str, Any]], max_tokens: int = 1024) -> list[float | None]:
        """Per prompt: mean cross-entropy of its reference answer's trained tokens (None without one)."""
        out: list[float | None] = []
        for p in prompts:
            if not p.get("reference"):
                out.append(None)
                continue
            enc = self.encoder.encode({"conversations": p["turns"] + [{"from": "gpt", "value": p["reference"]}]})
            ids = torch.tensor(enc.input_ids[:max_tokens])
            labels = torch.tensor(enc.labels[:max_tokens])
            if int((labels[1:] != IGNORE).sum()) == 0:
                out.append(None)
                continue
            logits = self.lm(input_ids=ids.unsqueeze(0).to(self.device)).logits[0, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits, labels[1:].to(self.device), ignore_index=IGNORE)
            out.append(float(loss) if math.isfinite(float(loss)) else None)
        return out
