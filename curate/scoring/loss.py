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

import pyarrow as pa
import pyarrow.compute as pc

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
    rows = batch.to_pylist()
    for row in rows:
        s = stats.get(row["source"])
        if row["reject_reason"] is not None or row["sample_loss"] is None or s is None or s["n"] < min_samples:
            continue
        detail = outlier_detail(row["sample_loss"], s, k)
        if detail:
            row.update(reject_stage=stage, reject_reason=REASON, reject_detail=detail)
    return pa.Table.from_pylist(rows, schema=batch.schema)
