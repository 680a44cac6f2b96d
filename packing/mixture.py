"""Mixture before packing: how many copies of each sample enter the packed output.

Repeat factor r in (0, 4] per source (InternVL 2.5): floor(r) copies for sure plus one more
with probability frac(r), drawn with the seed, so the expected count is exactly r.
Modality targets (e.g. text: 0.25, M2-omni) are met by down-sampling the modalities that
are over their target; nothing is invented. A count of 0 means "not drawn".
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def draw_counts(sources: Sequence[str], modalities: Sequence[str], repeat: Mapping[str, float],
                targets: Mapping[str, float] | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.array([repeat.get(s, 1.0) for s in sources], dtype=np.float64)
    base = np.floor(r).astype(np.int64)
    counts = base + (rng.random(len(r)) < (r - base))
    if targets:
        counts = _meet_targets(counts, np.asarray(modalities, dtype=object), targets, rng)
    return counts


def _meet_targets(counts: np.ndarray, modalities: np.ndarray, targets: Mapping[str, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Thin over-represented modalities until each targeted one is at most its share."""
    counts = counts.copy()
    total = counts.sum()
    for modality, share in sorted(targets.items()):
        if not 0 < share < 1 or total == 0:
            continue
        mask = modalities == modality
        have = counts[mask].sum()
        others = total - have
        if have / total > share and others > 0:
            keep = int(round(share * others / (1 - share)))
            idx = np.repeat(np.flatnonzero(mask), counts[mask])
            chosen = rng.choice(idx, size=keep, replace=False) if keep < len(idx) else idx
            counts[mask] = 0
            np.add.at(counts, chosen, 1)
            total = counts.sum()
    return counts


def mixture_report(modalities: Sequence[str], counts: np.ndarray, targets: Mapping[str, float] | None) -> dict:
    counts = np.asarray(counts)
    total = max(int(counts.sum()), 1)
    achieved = {}
    for m in sorted(set(modalities)):
        achieved[m] = round(float(counts[np.asarray(modalities, dtype=object) == m].sum()) / total, 4)
    return {"achieved": achieved, "target": dict(targets or {})}
