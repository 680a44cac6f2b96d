"""Energon's `.nv-meta/` beside the shards, as `energon prepare` makes it, written by every run.

Energon's own preparator (offline, on the local folder) writes the sample index
(`.nv-meta/index.sqlite`, `.info.json`, a `.tar.idx` beside each shard) and the split
(`split.yaml`: the last `val_shards` shards are val, the rest train, so val never shares a shard
with train; test is empty). Then `dataset.yaml` names the sample type
packing.energon.PackedSequenceSample and its loader (`sample_loader.py`), which is what
`energon info`, `energon lint` and `get_train_dataset` read; `crude.yaml` describes the same shards
as a CrudeWebdataset for trainers that cook samples themselves (packing.energon.PackedTaskEncoder).
Energon's index id (`index.uuid`) is derived from the shards' sha256: the same shards give the
same folder. This module imports Energon only when writing, so the pipeline loads it cheaply.

    python -m packing.energon_meta runs/sft-stage3/shards --val-shards 1   # (re)write it by hand
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import yaml

from packing.format import FORMAT, INDEX_NAME, MEMBERS
from packing.shards import file_sha256

log = logging.getLogger("curate")
META_DIR = ".nv-meta"

SAMPLE_LOADER = f'''"""Written by omnicurate: Energon loads packed sequences with packing.energon."""
from packing.energon import sample_fields


def sample_loader(raw: dict) -> dict:
    return sample_fields(raw)


def part_filter(part: str) -> bool:
    return part in {MEMBERS!r}
'''


def split_shards(names: list[str], val_shards: int) -> dict[str, list[str]]:
    """Train, val and test shard names: the last `val_shards` shards (by name) are val; test is empty."""
    names = sorted(names)
    if val_shards < 0 or (val_shards and val_shards >= len(names)):
        raise ValueError(f"stages.shard.val_shards={val_shards}: the run wrote {len(names)} shard(s) and "
                         f"train needs at least one; set val_shards below {len(names)} (or lower "
                         f"stages.shard.max_sequences to get more shards)")
    cut = len(names) - val_shards
    return {"train": names[:cut], "val": names[cut:], "test": []}


def write_energon_meta(shard_dir: str | Path, val_shards: int = 0) -> Path | None:
    """Write `.nv-meta/` (index, split, dataset.yaml) beside the shards, as `energon prepare` would."""
    shard_dir = Path(shard_dir)
    try:
        from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator
    except ImportError:
        log.warning("megatron-energon is not installed, so %s has no .nv-meta/ for Energon: "
                    "pip install 'megatron-energon[av-decode]' and run python -m packing.energon_meta %s",
                    shard_dir, shard_dir)
        return None

    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    if not names:
        raise FileNotFoundError(f"{shard_dir}: no .tar shards to describe for Energon")
    splits = split_shards(names, val_shards)
    # every split is listed, empty ones too: `energon lint` checks train, val and test and skips empty ones
    patterns = [(part, "^(" + "|".join(n.replace(".", r"\.") for n in members) + ")$" if members else "^$")
                for part, members in splits.items()]
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines are for the interactive CLI
        WebdatasetPreparator.prepare_dataset(shard_dir, names, split_parts_patterns=patterns,
                                             split_config="split.yaml", shuffle_seed=None, workers=1)
    meta = shard_dir / META_DIR
    index = shard_dir / INDEX_NAME
    known = ({e["shard"]: e["sha256"] for e in json.loads(index.read_text())["shards"]}
             if index.exists() else {})
    digest = hashlib.sha256("".join(known.get(n) or file_sha256(shard_dir / n) for n in names).encode())
    (meta / "index.uuid").write_text(str(uuid.UUID(bytes=digest.digest()[:16], version=5)))
    # dataset.yaml: the sample type and its loader (what `energon info`/`lint` and get_train_dataset read);
    # crude.yaml: the same shards as crude dicts, for trainers that cook them (PackedTaskEncoder)
    dataset = {"sample_type": {"__module__": "packing.energon", "__class__": "PackedSequenceSample"},
               "sample_loader": "sample_loader.py:sample_loader",
               "part_filter": "sample_loader.py:part_filter", "subflavors": {"format": FORMAT}}
    crude = {"__module__": "megatron.energon", "__class__": "CrudeWebdataset",
             "subflavors": {"format": FORMAT}}
    (meta / "sample_loader.py").write_text(SAMPLE_LOADER)
    (meta / "dataset.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    (meta / "crude.yaml").write_text(yaml.safe_dump(crude, sort_keys=False))
    return meta


def energon_info(shard_dir: str | Path) -> dict[str, Any]:
    """Sequences per split from .nv-meta (for checks and stats)."""
    meta = Path(shard_dir) / META_DIR
    counts = json.loads((meta / ".info.json").read_text())["shard_counts"]
    split = yaml.safe_load((meta / "split.yaml").read_text())["split_parts"]
    import braceexpand

    return {part: sum(counts[n] for pat in pats for n in braceexpand.braceexpand(pat))
            for part, pats in split.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write Energon's .nv-meta/ beside a run's shards.")
    parser.add_argument("shard_dir", help="a run's shards/ folder")
    parser.add_argument("--val-shards", type=int, default=0, help="the last N shards are the val split")
    args = parser.parse_args(argv)
    meta = write_energon_meta(args.shard_dir, args.val_shards)
    if meta is None:
        raise SystemExit("megatron-energon is not installed: pip install 'megatron-energon[av-decode]'")
    print(f"{meta}: {energon_info(args.shard_dir)}")


if __name__ == "__main__":
    main()
