"""Baichuan-omni loss-based cleaning: the statistics behind curate.stages.score_loss.

Pass 1 (per batch, on the model actors) stores each sample's mean token loss under a
reference model in `sample_loss`. Pass 2 needs every loss of a source at once: Ray's
groupby("source") aggregates count, mean and standard deviation per source (a shuffle,
no driver loop over rows; the result is one small row per source), then a map over the
batches rejects samples outside mean +/- k * std (`loss_outlier`). Too low a loss means
too easy (the answer repeats the prompt), too high means broken (swapped prompt and
answer, hallucination). Sources with fewer than `min_samples` losses are left alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.records import reject_where

REASON = "loss_outlier"


def _alive_losses(batch: pa.Table) -> pa.Table:
    keep = pc.and_(pc.is_null(batch.column("reject_reason")), pc.is_valid(batch.column("sample_loss")))
    return batch.filter(keep).select(["source", "sample_loss"])


def source_loss_stats(ds: Any, executor: Any) -> dict[str, dict[str, float]]:
    """source -> {n, mean, std} over the samples still in the pipeline that have a loss."""
    losses = ds.map_batches(_alive_losses, batch_format="pyarrow")
    return executor.group_moments(losses, "source", "sample_loss")


def outlier_detail(loss: float, stats: dict[str, float], k: float) -> str | None:
    """Why a loss is an outlier for its source's Gaussian, or None when it is inside."""
    low, high = stats["mean"] - k * stats["std"], stats["mean"] + k * stats["std"]
    if low <= loss <= high:
        return None
    side = "below" if loss < low else "above"
    return f"loss {loss:.4f} {side} [{low:.4f}, {high:.4f}] = mean {stats['mean']:.4f} +/- {k} x std {stats['std']:.4f}"


def reject_outliers(batch: pa.Table, stats: dict[str, dict[str, float]], k: float, min_samples: int,
                    stage: str) -> pa.Table:
    """Reject the alive samples whose loss lies outside their source's mean +/- k * std, on
    whole columns; sources with fewer than `min_samples` losses and samples without a loss stay."""
    sources = [name for name, s in stats.items() if s["n"] >= min_samples]
    if not len(batch) or not sources:
        return batch
    at = pc.index_in(batch.column("source"), value_set=pa.array(sources, pa.string()))
    has = pc.and_(pc.is_valid(at), pc.is_valid(batch.column("sample_loss"))).to_numpy(zero_copy_only=False)
    j = pc.fill_null(at, 0).to_numpy(zero_copy_only=False)
    loss = pc.fill_null(batch.column("sample_loss"), 0.0).to_numpy(zero_copy_only=False)
    mean = np.array([stats[name]["mean"] for name in sources], np.float64)[j]
    std = np.array([stats[name]["std"] for name in sources], np.float64)[j]
    # the float64 operations of outlier_detail, so the same samples leave (a NaN loss too)
    outside = has & ~((mean - k * std <= loss) & (loss <= mean + k * std))
    details = np.full(len(batch), None, object)
    for i in np.flatnonzero(outside).tolist():
        details[i] = outlier_detail(float(loss[i]), stats[sources[j[i]]], k)
    return reject_where(batch, outside, stage, REASON, details)
