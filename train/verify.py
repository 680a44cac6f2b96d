"""`curate verify-packing`: packed logits must equal each sample's logits run alone.

If attention leaks across packed samples, or positions do not restart, the logits of a
sample inside a packed sequence differ from the same sample forwarded by itself. This runs
both for the first N sequences that hold at least two samples and reports the max absolute
difference per sequence (fp32 on CPU: differences are float rounding, ~1e-5).
"""

from __future__ import annotations

from typing import Any

import torch


def sample_alone(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """The i-th packed sample as a one-sample batch (its tokens, tiles and clips only)."""
    samples = batch["samples"]
    s = samples[i]
    a, n = s["token_offset"], s["n_tokens"]
    tiles_before = s["tile_offset"]
    clips_before = sum(1 for x in samples[:i] for m in x["media"] if m["kind"] == "audio")
    n_clips = sum(1 for m in s["media"] if m["kind"] == "audio")
    one = dict(s, token_offset=0, tile_offset=0)
    out = {"key": f"{batch['key']}/{s.get('id')}", "input_ids": batch["input_ids"][a:a + n],
           "labels": batch["labels"][a:a + n], "position_ids": torch.arange(n),
           "cu_seqlens": torch.tensor([0, n], dtype=torch.int32), "samples": [one]}
    if "pixel_values" in batch:
        out["pixel_values"] = batch["pixel_values"][tiles_before:tiles_before + s.get("n_tiles", 0)]
        out["audio"] = batch["audio"][clips_before:clips_before + n_clips]
    return out


@torch.no_grad()
def packing_differences(model, batches, unmasked: bool = False) -> list[tuple[str, int, float]]:
    """(sequence key, samples, max |packed - alone| over the sequence's logits) per sequence."""
    model.eval()
    rows = []
    for batch in batches:
        packed = model(batch, packed=not unmasked).float()
        worst = 0.0
        for i, s in enumerate(batch["samples"]):
            alone = model(sample_alone(batch, i)).float()
            a = s["token_offset"]
            worst = max(worst, float((packed[a:a + s["n_tokens"]] - alone).abs().max()))
        rows.append((batch["key"], len(batch["samples"]), worst))
    return rows


def multi_sample_sequences(shards: str, n: int, tile_size: int = 448) -> list[dict[str, Any]]:
    """Decoded tensors of the first n packed sequences holding two or more samples."""
    import json

    from packing.format import JSON_MEMBER, read_raw, shard_paths
    from train.data import decode

    out = []
    for raw in read_raw(shard_paths(shards)):
        if len(json.loads(raw[JSON_MEMBER])["samples"]) >= 2:
            out.append(decode(raw, tile_size))
            if len(out) == n:
                break
    if not out:
        raise ValueError(f"{shards}: no packed sequence holds two samples; nothing to verify")
    return out
