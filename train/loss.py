"""Loss of packed sequences: InternVL 2.5 loss weighting, per-modality losses, M2-omni balance.

Weighting (InternVL 2.5, sec. 3.4): a trained token of a sample with x trained tokens has
weight 1 / x^p; p = 0 is token averaging (long answers dominate), p = 1 sample averaging
(short answers dominate), p = 0.5 "square averaging", the paper's compromise. The loss is the
weighted sum over the step's tokens divided by the sum of the weights. The weights are
packing.format.loss_weights, the same that PackedDataset hands out as `loss_weight`.

Balance (M2-omni):
- step (pre-training): w_i = alpha * (1 / L_i*) / sum_j (1 / L_j*), L_i* the loss modality i
  converges to when trained alone on a small subset; the step's loss is sum_i w_i * loss_i.
- dynamic (instruction tuning): every validation segment, each modality's validation losses
  over the last H segments are min-max normalised (eps 1e-6) and fitted with a line (slope
  a_i); a~_i = M a_i / sum_j |a_j|; s_i = softmax(a~)_i * (-a~_i); w_i = M softmax(f s)_i;
  the weights used are the EMA w~_t = 0.9 w~_(t-1) + 0.1 w_t, and all 1 for the first H segments.
Both are pure functions of numbers, so the tests check them against hand computation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from packing.format import IGNORE, loss_weights

POWERS = {"token": 0.0, "square": 0.5, "sample": 1.0}


def token_losses(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each token as predicted from the previous one of the same sample (0 where untrained)."""
    target = labels.clone()
    # a sample's first token is never predicted from the previous sample
    target[cu_seqlens[:-1].long()] = IGNORE
    ce = F.cross_entropy(logits[:-1].float(), target[1:], ignore_index=IGNORE, reduction="none")
    return torch.cat([ce.new_zeros(1), ce])  # aligned with labels: entry t is the loss of token t


def token_weights(samples: list[dict[str, Any]], labels: torch.Tensor, averaging: str) -> torch.Tensor:
    """1 / x^p per trained token (x = the sample's trained tokens), 0 elsewhere; a sample's first token
    is never trained (packing.format.loss_weights with the p of `averaging`)."""
    return torch.from_numpy(loss_weights(samples, labels.detach().cpu().numpy(), POWERS[averaging]))


def modality_of_tokens(samples: list[dict[str, Any]], length: int, modalities: list[str]) -> torch.Tensor:
    """Index into `modalities` of the sample each token belongs to."""
    idx = torch.zeros(length, dtype=torch.long)
    for s in samples:
        idx[s["token_offset"]:s["token_offset"] + s["n_tokens"]] = modalities.index(s["modality"])
    return idx


def modality_sums(losses: torch.Tensor, weights: torch.Tensor, mod_idx: torch.Tensor, n: int):
    """Per modality: (sum of w * loss, sum of w)."""
    wl = torch.zeros(n, device=losses.device).index_add(0, mod_idx.to(losses.device),
                                                         weights.to(losses.device) * losses)
    ws = torch.zeros(n, device=losses.device).index_add(0, mod_idx.to(losses.device), weights.to(losses.device))
    return wl, ws


def step_balance_weights(converged: dict[str, float], alpha: float = 10.0) -> dict[str, float]:
    """M2-omni step balance: w_i = alpha * (1/L_i*) / sum_j (1/L_j*)."""
    if any(v <= 0 for v in converged.values()):
        raise ValueError(f"train.converged_loss values must be > 0, got {converged}")
    inv = {k: 1.0 / v for k, v in converged.items()}
    total = sum(inv.values())
    return {k: alpha * v / total for k, v in inv.items()}


def _slope(ys: list[float]) -> float:
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    return sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sum((i - xm) ** 2 for i in range(n))


def dynamic_balance_weights(history: dict[str, list[float]], window: int, f: float,
                            eps: float = 1e-6) -> dict[str, float]:
    """M2-omni dynamic adaptive balance, raw weights w_t from the last `window` validation losses."""
    names = list(history)
    m = len(names)
    slopes = []
    for k in names:
        ys = history[k][-window:]
        lo, hi = min(ys), max(ys)
        slopes.append(_slope([(y - lo) / (hi - lo + eps) for y in ys]))
    norm = sum(abs(a) for a in slopes) or 1.0
    a_t = [m * a / norm for a in slopes]
    soft = _softmax(a_t)
    s = [p * -a for p, a in zip(soft, a_t)]
    w = _softmax([f * x for x in s])
    return {k: m * wi for k, wi in zip(names, w)}


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


class DynamicBalance:
    """State of the dynamic balance across validation segments (EMA 0.9, ones for the first H segments)."""

    def __init__(self, modalities: list[str], window: int, f: float, momentum: float = 0.9):
        self.modalities, self.window, self.f, self.momentum = list(modalities), window, f, momentum
        self.history: dict[str, list[float]] = {k: [] for k in self.modalities}
        self.weights = {k: 1.0 for k in self.modalities}

    def update(self, val_losses: dict[str, float]) -> dict[str, float]:
        for k in self.modalities:
            self.history[k].append(float(val_losses[k]))
        if len(self.history[self.modalities[0]]) > self.window:
            raw = dynamic_balance_weights(self.history, self.window, self.f)
            self.weights = {k: self.momentum * self.weights[k] + (1 - self.momentum) * raw[k] for k in self.modalities}
        return dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.weights = state["history"], state["weights"]
