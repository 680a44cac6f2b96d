"""Pack, step 2 (plan): the mixture and the 2D packing of every sample (InternVL 2.5, sec. 4.1-4.2).

On the driver, from a few small columns only (id, source, modality, n_tokens, n_tiles):
1. duplicate ids are dropped (`duplicate_id`), rows over a budget are rejected (`too_long`);
2. the mixture draws how many copies of each sample enter the output: repeat factors
   r in (0, 4] per source, then modality targets by down-sampling (packing.mixture); a
   sample with no copy leaves as `not_drawn`;
3. the copies, as (n_tokens, n_tiles) items, are packed under both budgets
   (packing.pack_2d; or in bounded-memory windows; or in Ray tasks per partition).
Then a Ray map writes one row per copy with its `sequence` and `position` in that sequence.
The plan depends only on the input and the seed, so the same recipe gives the same shards.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from curate.stages.base import GlobalStage, Job, Resources, map_options

PLAN_COLUMNS = ["id", "source", "origin", "modality", "manifest", "line", "n_tokens", "n_tiles"]
NOT_DRAWN = "down-sampled by the mixture (repeat < 1 or a modality target)"
DUPLICATE_ID = "another record of this source has the same id"


class PackPlanStage(GlobalStage):
    name: ClassVar[str] = "pack_plan"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256)
    source_keys: ClassVar[tuple[str, ...]] = ("repeat",)
    uses_seed: ClassVar[bool] = True

    def inputs(self) -> list[str]:
        return PLAN_COLUMNS

    def outputs(self) -> dict[str, pa.DataType]:
        return {"sequence": pa.int64(), "position": pa.int64()}

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return super().fingerprint() | {"modality_targets": self.ctx.modality_targets, "config": {
            "max_tokens": c.max_tokens, "max_tiles": c.max_tiles, "mode": c.mode, "window": c.window,
            "partitions": c.partitions}}

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        import ray

        alive = pc.field("reject_reason").is_null()
        meta = pads.dataset(str(job.input_dir), format="parquet").to_table(columns=PLAN_COLUMNS, filter=alive)
        p = plan(meta, self.config, {n: s.repeat for n, s in self.ctx.sources.items()},
                 self.ctx.modality_targets, self.ctx.seed)
        refs = [ray.put(p["placements"]), ray.put(p["kept"])]
        out = ds.map_batches(_place, **map_options(job.resources, actor=False),
                             fn_kwargs={"refs": refs, "max_tokens": self.config.max_tokens,
                                        "max_tiles": self.config.max_tiles, "stage": "pack"})
        info = {"packing": p["packing"], "sequences": len(p["bins"]),
                "budgets": {"max_tokens": self.config.max_tokens, "max_tiles": self.config.max_tiles}}
        return out, info


def plan(meta: pa.Table, pack: Any, repeat: dict[str, float], targets: dict[str, float],
         seed: int) -> dict[str, Any]:
    """Decide, for every record, how many copies go where (no I/O; Ray only in partitioned mode)."""
    from packing.mixture import draw_counts, mixture_report

    meta = meta.sort_by([("source", "ascending"), ("id", "ascending")])
    ids = meta.column("id").to_pylist()
    seen: set[str] = set()
    dup_mask = []
    for i in ids:
        dup_mask.append(i in seen)
        seen.add(i)
    meta = meta.filter(pc.invert(pa.array(dup_mask, pa.bool_())))
    fits = pc.and_(pc.less_equal(meta.column("n_tokens"), pack.max_tokens),
                   pc.less_equal(meta.column("n_tiles"), pack.max_tiles))
    meta = meta.filter(fits)

    counts = np.asarray(draw_counts(meta.column("source").to_pylist(), meta.column("modality").to_pylist(),
                                    repeat, targets or None, seed), dtype=np.int64)
    tokens = meta.column("n_tokens").to_numpy()
    tiles = meta.column("n_tiles").to_numpy()
    rows = np.repeat(np.arange(len(meta)), counts)
    items = np.stack([tokens[rows], tiles[rows]], axis=1).astype(np.int64) if len(rows) else np.zeros((0, 2), np.int64)
    bins, packing = pack_items(items, pack, seed)
    packing["mixture"] = mixture_report(meta.column("modality").to_pylist(), counts, targets)
    kept_ids = meta.column("id").to_pylist()
    placements: dict[str, list[tuple[int, int]]] = {}
    for seq, members in enumerate(bins):
        for pos, item in enumerate(members):
            placements.setdefault(kept_ids[rows[item]], []).append((seq, pos))
    # the row that holds a kept id (a duplicate id elsewhere is told apart by manifest and line)
    kept = dict(zip(kept_ids, zip(meta.column("manifest").to_pylist(), meta.column("line").to_pylist())))
    return {"bins": bins, "placements": placements, "kept": kept, "packing": packing}


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


def _place(batch: pa.Table, refs: list[Any], max_tokens: int, max_tiles: int, stage: str) -> pa.Table:
    """One output row per copy (a record repeated r times appears r times), or the row rejected.

    Works on columns: only ids, sizes, manifests and lines become Python values, never tokens.
    """
    import ray

    placements, kept = ray.get(refs[0]), ray.get(refs[1])
    take, seqs, poss = [], [], []
    rejected: list[tuple[int, str, str]] = []
    columns = (batch.column(c).to_pylist() for c in ("id", "n_tokens", "n_tiles", "manifest", "line"))
    for i, (rid, tok, til, manifest, line) in enumerate(zip(*columns)):
        if tok > max_tokens or til > max_tiles:
            rejected.append((i, "too_long", f"{tok} tokens / {til} tiles exceed the budgets {max_tokens} / "
                                            f"{max_tiles} (stages.pack.max_tokens / max_tiles)"))
        elif kept.get(rid) != (manifest, line):
            rejected.append((i, "duplicate_id", DUPLICATE_ID))
        elif rid not in placements:
            rejected.append((i, "not_drawn", NOT_DRAWN))
        else:
            for seq, pos in placements[rid]:
                take.append(i)
                seqs.append(seq)
                poss.append(pos)
    placed = batch.take(pa.array(take, pa.int64()))
    placed = placed.append_column("sequence", pa.array(seqs, pa.int64())).append_column(
        "position", pa.array(poss, pa.int64()))
    if not rejected:
        return placed
    out = batch.take(pa.array([i for i, _, _ in rejected], pa.int64()))
    n = len(rejected)
    for name, values in (("reject_stage", [stage] * n), ("reject_reason", [r for _, r, _ in rejected]),
                         ("reject_detail", [d for _, _, d in rejected])):
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, pa.string()))
    out = out.append_column("sequence", pa.nulls(n, pa.int64())).append_column("position", pa.nulls(n, pa.int64()))
    return pa.concat_tables([placed, out])
