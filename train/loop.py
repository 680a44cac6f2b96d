"""`curate train`: the thin loop that consumes the packed shards (no trainer framework).

    curate train recipes/sft-stage3.yaml --shards runs/x --max-steps 60 --log runs/x/train.jsonl
    curate train recipes/sft-stage3.yaml --shards runs/x --resume          # continue from the last checkpoint
    # DDP (gloo on CPU, nccl on GPU)
    torchrun --nproc-per-node 2 -m curate train recipes/sft-stage3.yaml --shards runs/x

One optimizer step = grad_accum micro-steps of sequences_per_step packed sequences per rank;
each sequence is forwarded and back-propagated on its own (its loss normalised by its own
weight sum), the step's gradients are averaged over sequences and ranks. Checkpoints are plain
dicts: model, optimizer, scheduler, step, data position, balance state, config, RNG state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from train.data import SequenceStream
from train.loss import (
    DynamicBalance,
    modality_of_tokens,
    modality_sums,
    step_balance_weights,
    token_losses,
    token_weights,
)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(recipe, device: str = "cpu"):
    from train.model import load_model

    cfg, tok = recipe.train, recipe.stages.tokenize
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.llm, cfg.vision, cfg.audio, tok.tokenizer, tok.audio_frames_per_second, tok.audio_pooling)
    model.check_shards(tok.tokens_per_tile, tok.audio_frames_per_second, tok.audio_pooling)
    parts = {"vision": model.vision, "audio": model.audio, "llm": model.llm,
             "vision_projector": model.vision_proj, "audio_projector": model.audio_proj}
    for name in cfg.freeze:
        parts[name].requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable()
    return model.to(device)


def sequence_loss(model, batch, modalities: list[str], averaging: str, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-modality (sum of w * loss, sum of w) of one packed sequence, differentiable."""
    with autocast():
        logits = model(batch)
    ce = token_losses(logits, batch["labels"].to(logits.device), batch["cu_seqlens"].to(logits.device))
    w = token_weights(batch["samples"], batch["labels"], averaging)
    midx = modality_of_tokens(batch["samples"], len(w), modalities)
    return modality_sums(ce, w, midx, len(modalities))


def combine(wl: torch.Tensor, ws: torch.Tensor, weights: list[float] | None) -> torch.Tensor:
    """No balance: weighted-token mean over the sequence; balanced: sum_i w_i * loss_i over present modalities."""
    if weights is None:
        return wl.sum() / ws.sum().clamp_min(1e-12)
    present = ws > 0
    mw = torch.tensor(weights, device=wl.device)
    return (mw[present] * wl[present] / ws[present]).sum()


def train(recipe, shards: str, max_steps: int | None = None, log: str | None = None, resume: bool = False,
          echo=print) -> list[dict[str, Any]]:
    return fit(recipe, shards, max_steps, log, resume, echo)[0]


def fit(recipe, shards: str, max_steps: int | None = None, log: str | None = None, resume: bool = False,
        echo=print, save: bool = True) -> tuple[list[dict[str, Any]], Any]:
    """train(), also returning the trained model; save=False writes no checkpoint (`curate ablate`
    keeps the model in memory: a checkpoint of a 135M model with its AdamW state is ~1.6 GB)."""
    cfg = recipe.train
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.startswith("cuda"))
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    total = max_steps or cfg.max_steps

    model = build_model(recipe, device)
    stream = SequenceStream(shards, rank, world, cfg.seed, cfg.val_every, recipe.stages.media.tile_size)
    modalities = stream.modalities()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, total))
    weights = balance_start(cfg, modalities, stream)
    dyn = DynamicBalance(modalities, cfg.balance_window, cfg.balance_f) if cfg.balance == "dynamic" else None

    ckpt_dir = Path(cfg.checkpoint_dir or (Path(stream.paths[0]).parent.parent / "train"))
    step = 0
    if resume:
        step = load_checkpoint(ckpt_dir / "latest.pt", model, opt, sched, stream, dyn)
        weights = [dyn.weights[m] for m in modalities] if dyn else weights
        echo(f"resumed from {ckpt_dir / 'latest.pt'} at step {step}")
    log_f = open(log, "a" if resume else "w") if log and rank == 0 else None
    rows = []
    model.train()
    while step < total:
        t0 = time.time()
        wl_sum = torch.zeros(len(modalities))
        ws_sum = torch.zeros(len(modalities))
        tokens, keys = 0, []
        n_seq = cfg.grad_accum * cfg.sequences_per_step
        for _ in range(n_seq):
            batch = stream.next()
            wl, ws = sequence_loss(model, batch, modalities, cfg.loss_averaging, autocast)
            (combine(wl, ws, weights) / n_seq).backward()
            wl_sum += wl.detach().float().cpu()
            ws_sum += ws.detach().float().cpu()
            tokens += len(batch["input_ids"])
            keys.append(batch["key"])
        if world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
            stats = torch.cat([wl_sum, ws_sum, torch.tensor([float(tokens)])]).to(device)
            torch.distributed.all_reduce(stats)
            stats = stats.cpu()
            wl_sum, ws_sum, tokens = stats[:len(modalities)], stats[len(modalities):-1], int(stats[-1])
            gathered: list[list[str]] = [[] for _ in range(world)]
            torch.distributed.all_gather_object(gathered, keys)
            keys = [k for ks in gathered for k in ks]
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if dyn is not None and step % cfg.val_interval == 0:
            weights = [dyn.update(validation_losses(model, stream, modalities, cfg.loss_averaging, autocast,
                                                    world))[m] for m in modalities]
        seconds = time.time() - t0
        present = ws_sum > 0
        row = {"step": step, "loss": float(wl_sum.sum() / ws_sum.sum().clamp_min(1e-12)),
               "loss_by_modality": {m: float(wl_sum[i] / ws_sum[i]) for i, m in enumerate(modalities) if present[i]},
               "modality_weights": dict(zip(modalities, weights)) if weights else {m: 1.0 for m in modalities},
               "lr": lr, "tokens_per_s": tokens / seconds, "seconds": seconds, "sequences": keys}
        rows.append(row)
        if rank == 0:
            if log_f:
                log_f.write(json.dumps(row) + "\n")
                log_f.flush()
            # One line rewritten in place on a terminal; one line per step in a log file.
            tty = sys.stderr.isatty()
            print(("\r" if tty else "") + f"step {step}/{total} loss {row['loss']:.4f} lr {lr:.2e} "
                  f"{row['tokens_per_s']:.0f} tok/s", end="" if tty and step < total else "\n",
                  file=sys.stderr, flush=True)
        if save and rank == 0 and (step == total or (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0)):
            save_checkpoint(ckpt_dir, step, model, opt, sched, stream, dyn, recipe)
    if log_f:
        log_f.close()
    return rows, model


def balance_start(cfg, modalities: list[str], stream: SequenceStream) -> list[float] | None:
    if cfg.balance == "none":
        return None
    if cfg.balance == "step":
        missing = [m for m in modalities if m not in cfg.converged_loss]
        if missing:
            raise ValueError(f"train.balance=step needs train.converged_loss for {missing}: train each modality "
                             f"alone on a small subset (balance none) and put its final loss there")
        w = step_balance_weights({m: cfg.converged_loss[m] for m in modalities}, cfg.balance_alpha)
        return [w[m] for m in modalities]
    if not stream.val_ids:
        raise ValueError("train.balance=dynamic needs held-out validation sequences: set train.val_every > 0")
    return [1.0] * len(modalities)


@torch.no_grad()
def validation_losses(model, stream, modalities, averaging, autocast, world: int = 1) -> dict[str, float]:
    """Per-modality weighted validation loss over the held-out sequences (same on every rank)."""
    model.eval()
    wl_sum, ws_sum = torch.zeros(len(modalities)), torch.zeros(len(modalities))
    for batch in stream.validation():
        wl, ws = sequence_loss(model, batch, modalities, averaging, autocast)
        wl_sum += wl.float().cpu()
        ws_sum += ws.float().cpu()
    model.train()
    # a modality absent from the validation subset keeps a flat curve (no evidence either way)
    return {m: float(wl_sum[i] / ws_sum[i]) if ws_sum[i] > 0 else 1.0 for i, m in enumerate(modalities)}


def save_checkpoint(folder: Path, step: int, model, opt, sched, stream, dyn, recipe) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "step": step, "data": stream.state_dict(), "balance": dyn.state_dict() if dyn else None,
             "config": recipe.train.model_dump(mode="json"), "rng": torch.get_rng_state()}
    path = folder / f"step-{step:06d}.pt"
    torch.save(state, path)
    tmp = folder / "latest.pt.tmp"  # written then renamed: a stop mid-save never leaves a broken latest.pt
    torch.save(state, tmp)
    os.replace(tmp, folder / "latest.pt")
    return path


def load_checkpoint(path: Path, model, opt, sched, stream, dyn) -> int:
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path} (train once without --resume first)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    stream.load_state_dict(state["data"])
    if dyn is not None and state["balance"]:
        dyn.load_state_dict(state["balance"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])
