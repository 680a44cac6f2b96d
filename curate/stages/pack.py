"""Select, mixture, 2D packing and shard writing: the composite step at the end of a run.

0. Select (Ray, only the over-budget rows): split them at turn boundaries or truncate
   them (packing.select); the parts go to <out>/work/pack-select/.
1. Plan (driver, on a few small columns): drop duplicate ids, draw the mixture (repeat
   factors, modality targets), pack (n_tokens, n_tiles) items under both budgets
   (packing.pack_2d; or in bounded-memory windows; or in Ray tasks per partition), cut
   the packed sequences into shards.
2. Write (Ray): attach each record's (shard, sequence, position) placements, group rows
   by shard with Ray's groupby, and write each shard in its own task.
The plan depends only on the input and the seed, so the same recipe gives the same shards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate.records import REJECT_COLUMNS
from packing.energon_meta import write_energon_meta
from packing.select import SelectCounts, counts_from_meta, fits, select_row
from packing.shards import SHARD_PATTERN, pack_sequence, write_index, write_shard

log = logging.getLogger("curate")
PLAN_COLUMNS = ["id", "source", "origin", "modality", "manifest", "line", "n_tokens", "n_tiles"]


def draw_counts(sources: list[str], modalities: list[str], repeat: dict[str, float],
                targets: dict[str, float] | None, seed: int) -> np.ndarray:
    from packing.mixture import draw_counts as _draw

    return np.asarray(_draw(sources, modalities, repeat, targets or None, seed), dtype=np.int64)


def plan(meta: pa.Table, recipe: Any) -> dict[str, Any]:
    """Decide, for every record, how many copies go where (no I/O; Ray only in partitioned mode)."""
    meta = meta.sort_by([("source", "ascending"), ("id", "ascending")])
    ids = meta.column("id").to_pylist()
    seen: set[str] = set()
    dup_mask = []
    for i in ids:
        dup_mask.append(i in seen)
        seen.add(i)
    dup_mask_arr = pa.array(dup_mask, pa.bool_())
    duplicates = meta.filter(dup_mask_arr)
    meta = meta.filter(pc.invert(dup_mask_arr))
    pack = recipe.stages.pack
    fits = pc.and_(pc.less_equal(meta.column("n_tokens"), pack.max_tokens),
                   pc.less_equal(meta.column("n_tiles"), pack.max_tiles))
    too_long = meta.filter(pc.invert(fits))
    meta = meta.filter(fits)

    sources = meta.column("source").to_pylist()
    counts = draw_counts(sources, meta.column("modality").to_pylist(),
                         {s.name: s.repeat for s in recipe.sources}, recipe.modality_targets, recipe.seed)
    tokens = meta.column("n_tokens").to_numpy()
    tiles = meta.column("n_tiles").to_numpy()
    rows = np.repeat(np.arange(len(meta)), counts)
    items = np.stack([tokens[rows], tiles[rows]], axis=1).astype(np.int64) if len(rows) else np.zeros((0, 2), np.int64)
    bins, packing = pack_items(items, pack, recipe.seed)
    from packing.mixture import mixture_report

    packing["mixture"] = mixture_report(meta.column("modality").to_pylist(), counts, recipe.modality_targets)
    per_shard = recipe.stages.shard.max_sequences
    kept_ids = meta.column("id").to_pylist()
    placements: dict[str, list[tuple[int, int, int]]] = {}
    for seq, members in enumerate(bins):
        for pos, item in enumerate(members):
            placements.setdefault(kept_ids[rows[item]], []).append((seq // per_shard, seq, pos))
    return {"meta": meta, "counts": counts, "rows": rows, "bins": bins, "placements": placements,
            "duplicates": duplicates, "too_long": too_long, "packing": packing}


def _pack_partition(items: np.ndarray, max_tokens: int, max_tiles: int) -> list[list[int]]:
    from packing import pack_2d

    return pack_2d(items, max_tokens, max_tiles)


def pack_items(items: np.ndarray, pack: Any, seed: int) -> tuple[list[list[int]], dict[str, Any]]:
    """Bins of item indices by the recipe's packing mode, and how good they are."""
    from packing.pack2d import lower_bound, pack_2d, pack_2d_stream

    info: dict[str, Any] = {"mode": pack.mode, "items": len(items),
                            "lower_bound": lower_bound(items, pack.max_tokens, pack.max_tiles)}
    if pack.mode == "stream":
        bins = list(pack_2d_stream(iter(items.tolist()), pack.max_tokens, pack.max_tiles, window=pack.window))
    elif pack.mode == "partitioned" and len(items) > pack.partitions:
        import ray

        # a seeded shuffle dealt round-robin: every partition gets the same source/modality mix
        perm = np.random.default_rng(seed).permutation(len(items))
        parts = [np.sort(perm[k::pack.partitions]) for k in range(pack.partitions)]
        task = ray.remote(_pack_partition)
        results = ray.get([task.remote(items[idx], pack.max_tokens, pack.max_tiles) for idx in parts])
        bins = sorted(([int(idx[i]) for i in b] for idx, res in zip(parts, results) for b in res), key=lambda b: b[0])
        global_bins = len(pack_2d(items, pack.max_tokens, pack.max_tiles))
        info.update(partitions=pack.partitions, global_sequences=global_bins,
                    partition_loss=round(len(bins) / max(global_bins, 1) - 1, 4))
    else:
        bins = pack_2d(items, pack.max_tokens, pack.max_tiles)
    info["sequences"] = len(bins)
    info["over_lower_bound"] = round(len(bins) / info["lower_bound"], 4) if info["lower_bound"] else 1.0
    return bins, info


def _select_batch(batch: pa.Table, max_tokens: int, max_tiles: int, split: bool, truncate: bool) -> pa.Table:
    """The alive over-budget rows of a batch, split / truncated / rejected; other rows are dropped."""
    rows = [out for row in batch.to_pylist()
            if row.get("reject_reason") is None and not fits(row, max_tokens, max_tiles)
            for out in select_row(row, max_tokens, max_tiles, split=split, truncate=truncate)]
    return pa.Table.from_pylist(rows, schema=batch.schema)


def _attach(batch: pa.Table, placements_ref: list[Any], max_tokens: int, max_tiles: int) -> pa.Table:
    """One output row per placement (a record repeated r times appears r times)."""
    import ray

    placements = ray.get(placements_ref[0])
    idx, shard, seq, pos = [], [], [], []
    sizes = zip(batch.column("n_tokens").to_pylist(), batch.column("n_tiles").to_pylist())
    for i, (rid, (tok, til)) in enumerate(zip(batch.column("id").to_pylist(), sizes)):
        if tok > max_tokens or til > max_tiles:
            continue  # an over-budget original: its selected parts (same id for part 1) are placed instead
        for s, q, p in placements.get(rid, ()):
            idx.append(i)
            shard.append(s)
            seq.append(q)
            pos.append(p)
    out = batch.take(pa.array(idx, type=pa.int64()))
    return out.append_column("shard", pa.array(shard, pa.int64())).append_column(
        "sequence", pa.array(seq, pa.int64())).append_column("position", pa.array(pos, pa.int64()))


def _write_group(group: pa.Table, shard_dir: str, augment_sources: list[str]) -> pa.Table:
    group = group.sort_by([("sequence", "ascending"), ("position", "ascending")])
    shard = group.column("shard")[0].as_py()
    rows = group.to_pylist()
    sequences = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end]["sequence"] == rows[start]["sequence"]:
            end += 1
        seq = rows[start]["sequence"]
        sequences.append(pack_sequence(f"{shard:06d}-{seq:08d}", seq, rows[start:end], frozenset(augment_sources)))
        start = end
    entry = write_shard(Path(shard_dir) / SHARD_PATTERN.format(shard), sequences)
    return pa.table({"entry": [json.dumps(entry)]})


class PackStep:
    name = "pack"

    def __init__(self, recipe: Any, ctx: Any, out_dir: Path) -> None:
        self.recipe, self.ctx, self.out = recipe, ctx, Path(out_dir)
        self.shard_dir = self.out / "shards"
        self.select_dir = self.out / "work" / "pack-select"

    def select(self, tokenized_dir: Path, meta: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        """Run the select step on the over-budget rows; returns (plan meta, select rejects, counts)."""
        import ray

        pack = self.recipe.stages.pack
        fits = pc.and_(pc.less_equal(meta.column("n_tokens"), pack.max_tokens),
                       pc.less_equal(meta.column("n_tiles"), pack.max_tiles))
        shutil.rmtree(self.select_dir, ignore_errors=True)
        over = len(meta) - pc.sum(fits).as_py() if len(meta) else 0
        if not over:
            return meta, meta.schema.empty_table(), SelectCounts().as_dict()
        ds = ray.data.read_parquet(str(tokenized_dir)).map_batches(
            _select_batch, batch_format="pyarrow",
            fn_kwargs={"max_tokens": pack.max_tokens, "max_tiles": pack.max_tiles,
                       "split": pack.split, "truncate": pack.truncate})
        tmp = self.select_dir.with_name("pack-select.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.write_parquet(str(tmp))
        tmp.mkdir(parents=True, exist_ok=True)
        schema = pads.dataset(str(tokenized_dir), format="parquet").schema
        pq.write_table(schema.empty_table(), tmp / "part-empty.parquet")
        os.replace(tmp, self.select_dir)
        selected = pads.dataset(str(self.select_dir), format="parquet").to_table(
            columns=PLAN_COLUMNS + ["meta", "reject_reason", "reject_detail"])
        rejected = selected.filter(pc.field("reject_reason").is_valid())
        parts = selected.filter(pc.field("reject_reason").is_null())
        counts = counts_from_meta(parts.column("meta").to_pylist())
        counts.over_budget, counts.rejected = over, len(rejected)
        plan_meta = pa.concat_tables([meta.filter(fits), parts.select(PLAN_COLUMNS)])
        return plan_meta, rejected, counts.as_dict()

    def run(self, tokenized_dir: Path, upstream: str, summary: dict[str, Any]) -> None:
        import ray

        config_hash = self.recipe.stage_hash("pack", self.recipe.stage_hash("shard", upstream))
        marker = self.shard_dir / "_DONE.json"
        if marker.exists() and json.loads(marker.read_text()).get("hash") == config_hash:
            log.info("stage pack: done in an earlier run, skipping")
            summary["stages"].append(json.loads(marker.read_text()) | {"resumed": True})
            return
        t0 = time.perf_counter()
        alive = pc.field("reject_reason").is_null()
        meta = pads.dataset(str(tokenized_dir), format="parquet").to_table(columns=PLAN_COLUMNS, filter=alive)
        n_rows = len(meta)
        meta, select_rejects, select_counts = self.select(tokenized_dir, meta)
        p = plan(meta, self.recipe)
        self.write_rejects(p, select_rejects)
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        tmp_dir = self.out / "shards.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        entries: list[dict[str, Any]] = []
        if p["bins"]:
            ref = ray.put(p["placements"])
            pack_cfg = self.recipe.stages.pack
            paths = [str(tokenized_dir)] + ([str(self.select_dir)] if self.select_dir.exists() else [])
            ds = ray.data.read_parquet(paths).map_batches(
                _attach, batch_format="pyarrow", fn_kwargs={"placements_ref": [ref], "max_tokens": pack_cfg.max_tokens,
                                                            "max_tiles": pack_cfg.max_tiles})
            n_shards = p["bins"] and (len(p["bins"]) - 1) // self.recipe.stages.shard.max_sequences + 1
            written = ds.groupby("shard", num_partitions=max(1, min(n_shards, 64))).map_groups(_write_group, batch_format="pyarrow",
                                                     fn_kwargs={"shard_dir": str(tmp_dir), "augment_sources":
                                                                [s.name for s in self.recipe.sources if s.augment]})
            entries = [json.loads(r["entry"]) for r in written.take_all()]
        pack_cfg = self.recipe.stages.pack
        write_index(tmp_dir, entries, {"max_tokens": pack_cfg.max_tokens, "max_tiles": pack_cfg.max_tiles})
        if entries:  # Energon's .nv-meta/ (index, train/val split, sample type) beside the shards
            write_energon_meta(tmp_dir, pack_cfg.val_shards)
        self.write_contents(p, tmp_dir)
        os.replace(tmp_dir, self.shard_dir)
        info = {"stage": "pack", "hash": config_hash, "rows": n_rows,
                "kept": int((p["counts"] > 0).sum()),
                "rejected": {"not_drawn": int((p["counts"] == 0).sum()), "duplicate_id": len(p["duplicates"]),
                             "too_long": len(p["too_long"]) + len(select_rejects)},
                "select": select_counts, "packing": p["packing"],
                "sequences": len(p["bins"]), "shards": len(entries), "seconds": round(time.perf_counter() - t0, 3)}
        (self.shard_dir / "_DONE.json").write_text(json.dumps(info, indent=2))
        summary["stages"].append(info)
        log.info("stage pack: %d samples -> %d sequences in %d shards (%.1fs)", info["kept"], info["sequences"],
                 info["shards"], info["seconds"])

    def write_rejects(self, p: dict[str, Any], select_rejects: pa.Table) -> None:
        meta, counts = p["meta"], p["counts"]
        not_drawn = meta.filter(pa.array(counts == 0))
        parts = []
        pack = self.recipe.stages.pack
        too_long = p["too_long"]
        too_long_detail = [f"{t} tokens / {g} tiles exceed the budgets {pack.max_tokens} / {pack.max_tiles} "
                           "(stages.pack.max_tokens / max_tiles)" for t, g in
                           zip(too_long.column("n_tokens").to_pylist(), too_long.column("n_tiles").to_pylist())]
        for table, reason, detail in (
                (not_drawn, "not_drawn", ["down-sampled by the mixture (repeat < 1 or a modality target)"] * len(not_drawn)),
                (p["duplicates"], "duplicate_id", ["another record of this source has the same id"] * len(p["duplicates"])),
                (too_long, "too_long", too_long_detail)):
            n = len(table)
            parts.append(table.select([c for c in REJECT_COLUMNS if c in table.column_names]).append_column(
                "reject_stage", pa.array(["pack"] * n, pa.string())).append_column(
                "reject_reason", pa.array([reason] * n, pa.string())).append_column(
                "reject_detail", pa.array(detail, pa.string())))
        if len(select_rejects):
            parts.append(select_rejects.select([c for c in REJECT_COLUMNS if c in select_rejects.column_names
                                                and c not in ("reject_reason", "reject_detail")]).append_column(
                "reject_stage", pa.array(["pack"] * len(select_rejects), pa.string())).append_column(
                "reject_reason", select_rejects.column("reject_reason")).append_column(
                "reject_detail", select_rejects.column("reject_detail")))
        rejects = pa.concat_tables(parts).select(REJECT_COLUMNS)
        self.out.joinpath("rejects").mkdir(parents=True, exist_ok=True)
        pq.write_table(rejects, self.out / "rejects" / "pack.parquet")

    def write_contents(self, p: dict[str, Any], shard_dir: Path) -> None:
        """Which distinct sample sits in the shards, with its copy count (for stats and audits)."""
        meta, counts = p["meta"], p["counts"]
        kept = meta.filter(pa.array(counts > 0)).select(["id", "source", "origin", "modality", "n_tokens", "n_tiles"])
        kept = kept.append_column("copies", pa.array(counts[counts > 0], pa.int64()))
        pq.write_table(kept, shard_dir / "contents.parquet")
        tokens, tiles = p["meta"].column("n_tokens").to_numpy(), p["meta"].column("n_tiles").to_numpy()
        rows = p["rows"]
        per_shard = self.recipe.stages.shard.max_sequences
        pq.write_table(pa.table({
            "sequence": np.arange(len(p["bins"]), dtype=np.int64),
            "shard": np.arange(len(p["bins"]), dtype=np.int64) // per_shard,
            "n_samples": [len(b) for b in p["bins"]],
            "n_tokens": [int(tokens[rows[b]].sum()) for b in p["bins"]],
            "n_tiles": [int(tiles[rows[b]].sum()) for b in p["bins"]],
        }), shard_dir / "sequences.parquet")
