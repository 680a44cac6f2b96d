"""Megatron-Energon reads the shards as they are: a sample type, its loader, and a cooker.

Every run writes `.nv-meta/` beside its shards (packing.energon_meta.write_energon_meta), whose
`dataset.yaml` names `PackedSequenceSample` and loads it with `sample_fields`: the same tensors
as packing.loader.iter_packed (Energon has already decoded the .json, .npy and .mp members).
A packed sequence is already a batch: use batch_size=None.

    from megatron.energon import WorkerConfig, get_loader, get_train_dataset
    ds = get_train_dataset("runs/sft-stage3/shards", batch_size=None, shuffle_buffer_size=100,
                           max_samples_per_sequence=None,
                           worker_config=WorkerConfig.default_worker_config(num_workers=2))
    for seq in get_loader(ds):
        seq.input_ids, seq.cu_seqlens, seq.pixel_values ...

Trainers that cook crude samples themselves (e.g. in a metadataset) read `crude.yaml` with
`PackedTaskEncoder`: get_train_dataset(..., dataset_config="crude.yaml", task_encoder=PackedTaskEncoder()).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from megatron.energon import Cooker, DefaultTaskEncoder, Sample, basic_sample_keys, stateless

from packing.energon_meta import write_energon_meta  # noqa: F401  (the writer, re-exported)
from packing.format import FORMAT
from packing.loader import to_tensors


@dataclass
class PackedSequenceSample(Sample):
    """One packed sequence, as packing.loader.to_tensors returns it."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    loss_weight: torch.Tensor
    pixel_values: torch.Tensor | None
    audio: list[np.ndarray] | None
    samples: list[dict[str, Any]]


def sample_fields(raw: dict[str, Any], decode: bool = True, tile_size: int = 448) -> dict[str, Any]:
    """PackedSequenceSample's fields from the decoded members of one packed sequence."""
    t = to_tensors(raw, decode=decode, tile_size=tile_size)
    return {"input_ids": t["input_ids"], "labels": t["labels"], "position_ids": t["position_ids"],
            "cu_seqlens": t["cu_seqlens"], "loss_weight": t["loss_weight"],
            "pixel_values": t.get("pixel_values"), "audio": t.get("audio"), "samples": t["samples"]}


@stateless
def cook_packed(crude: dict[str, Any]) -> PackedSequenceSample:
    """The cooker for the crude reading (`crude.yaml`): a crude sample -> PackedSequenceSample."""
    return PackedSequenceSample(**basic_sample_keys(crude), **sample_fields(crude))


class PackedTaskEncoder(DefaultTaskEncoder):
    """Cooks omnicurate packed sequences read through `crude.yaml`; use batch_size=None."""

    cookers = [Cooker(cook_packed, has_subflavors={"format": FORMAT})]
