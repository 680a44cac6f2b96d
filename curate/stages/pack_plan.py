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

from curate.records import reject_where
from curate.stages.base import GlobalStage, Job, Resources

PLAN_COLUMNS = ["id", "source", "origin", "modality", "manifest", "line", "n_tokens", "n_tiles"]
NOT_DRAWN = "down-sampled by the mixture (repeat < 1 or a modality target)"
DUPLICATE_ID = "another record of this source has the same id"


class PackPlanStage(GlobalStage):
    name: ClassVar[str] = "pack_plan"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256)
    # of stages.pack (pack_select reads split and truncate)
    config_keys: ClassVar[tuple[str, ...]] = ("max_tokens", "max_tiles", "mode", "window", "partitions")
    source_keys: ClassVar[tuple[str, ...]] = ("repeat",)
    ctx_keys: ClassVar[tuple[str, ...]] = ("seed", "modality_targets")

    def inputs(self) -> list[str]:
        return PLAN_COLUMNS

    def outputs(self) -> dict[str, pa.DataType]:
        return {"sequence": pa.int64(), "position": pa.int64()}

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        ex = job.executor
        alive = pc.field("reject_reason").is_null()
        meta = pads.dataset(str(job.input_dir), format="parquet").to_table(columns=PLAN_COLUMNS, filter=alive)
        p = plan(meta, self.config, {n: s.repeat for n, s in self.ctx.sources.items()},
                 self.ctx.modality_targets, self.ctx.seed, ex)
        # Arrow tables are shared without a copy: every batch looks its rows up in them (a
        # dict here was unpickled once per batch: 168 s of 100k rows)
        out = ex.map(ds, _place, job.resources, records=ex.share(p["rows"]), copies=ex.share(p["copies"]),
                     max_tokens=self.config.max_tokens, max_tiles=self.config.max_tiles, stage="pack")
        info = {"packing": p["packing"], "sequences": len(p["bins"]),
                "budgets": {"max_tokens": self.config.max_tokens, "max_tiles": self.config.max_tiles}}
        return out, info


def plan(meta: pa.Table, pack: Any, repeat: dict[str, float], targets: dict[str, float],
         seed: int, executor: Any = None) -> dict[str, Any]:
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
    bins, packing = pack_items(items, pack, seed, executor)
    packing["mixture"] = mixture_report(meta.column("modality").to_pylist(), counts, targets)
    # every copy's (sequence, position), grouped by the record it copies, in sequence order
    item_seq = np.zeros(len(items), np.int64)
    item_pos = np.zeros(len(items), np.int64)
    for seq, members in enumerate(bins):
        item_seq[members] = seq
        item_pos[members] = np.arange(len(members))
    order = np.lexsort((item_pos, item_seq, rows))
    copies = pa.table({"sequence": item_seq[order], "position": item_pos[order]})
    # per kept record: the row that holds its id (a duplicate id elsewhere is told apart by
    # manifest and line) and where its copies start in `copies`
    first = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else np.zeros(0, np.int64)
    meta = meta.combine_chunks()
    records = pa.table({"id": meta.column("id"), "manifest": meta.column("manifest"), "line": meta.column("line"),
                        "first": pa.array(first, pa.int64()), "count": pa.array(counts, pa.int64()),
                        "key": pa.array(id_keys(meta.column("id")), pa.uint64())})
    records = records.take(pa.array(np.argsort(records.column("key").to_numpy(), kind="stable")))
    return {"bins": bins, "rows": records, "copies": copies, "packing": packing}


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit key per id: pandas' SipHash of the string (a fixed key, so the same in every
    process), computed on whole arrays.

    The records' keys are sorted once by plan(), so a batch finds its ids by binary search
    instead of building a hash set of every id once per batch (docs/benchmarks.md)."""
    import pandas as pd

    return pd.util.hash_array(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object))


def _lookup(records: pa.Table, ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Index in `records` (sorted by key) of each id, -1 where it has none."""
    keys = records.column("key").to_numpy()
    want = id_keys(ids)
    at = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    found = np.full(len(want), -1, np.int64)
    if not len(keys):
        return found
    hit = keys[at] == want
    same = hit & _same(records.column("id").take(pa.array(at)), ids)
    found[same] = at[same]
    clash = np.flatnonzero(hit & ~same)  # two ids with one key: ask the exact set for these few
    if len(clash):
        exact = pc.index_in(pa.array(ids).take(pa.array(clash)) if isinstance(ids, pa.Array)
                            else ids.take(pa.array(clash)), value_set=records.column("id"))
        found[clash] = pc.fill_null(exact, -1).to_numpy(zero_copy_only=False)
    return found


def _pack_partition(items: np.ndarray, max_tokens: int, max_tiles: int) -> list[list[int]]:
    from packing import pack_2d

    return pack_2d(items, max_tokens, max_tiles)


def pack_items(items: np.ndarray, pack: Any, seed: int,
               executor: Any = None) -> tuple[list[list[int]], dict[str, Any]]:
    """Bins of item indices by the recipe's packing mode, and how good they are (partitioned
    mode packs its partitions as tasks of `executor`)."""
    from packing.pack2d import lower_bound, pack_2d, pack_2d_stream

    info: dict[str, Any] = {"mode": pack.mode, "items": len(items),
                            "lower_bound": lower_bound(items, pack.max_tokens, pack.max_tiles)}
    if pack.mode == "stream":
        bins = list(pack_2d_stream(iter(items.tolist()), pack.max_tokens, pack.max_tiles, window=pack.window))
    elif pack.mode == "partitioned" and len(items) > pack.partitions:
        # a seeded shuffle dealt round-robin: every partition gets the same source/modality mix
        perm = np.random.default_rng(seed).permutation(len(items))
        parts = [np.sort(perm[k::pack.partitions]) for k in range(pack.partitions)]
        if executor is None:
            raise ValueError("stages.pack.mode=partitioned packs its partitions as tasks: pass an executor")
        task = executor.remote(_pack_partition)
        results = executor.get([task(items[idx], pack.max_tokens, pack.max_tiles) for idx in parts])
        bins = sorted(([int(idx[i]) for i in b] for idx, res in zip(parts, results) for b in res), key=lambda b: b[0])
        global_bins = len(pack_2d(items, pack.max_tokens, pack.max_tiles))
        info.update(partitions=pack.partitions, global_sequences=global_bins,
                    partition_loss=round(len(bins) / max(global_bins, 1) - 1, 4))
    else:
        bins = pack_2d(items, pack.max_tokens, pack.max_tiles)
    info["sequences"] = len(bins)
    info["over_lower_bound"] = round(len(bins) / info["lower_bound"], 4) if info["lower_bound"] else 1.0
    return bins, info


def _same(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Element-wise a == b, with two nulls equal."""
    eq = pc.fill_null(pc.equal(a, b), False)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(eq, both_null).to_numpy(zero_copy_only=False)


def _place(batch: pa.Table, records: Any, copies: Any, max_tokens: int, max_tiles: int, stage: str) -> pa.Table:
    """One output row per copy (a record repeated r times appears r times), or the row rejected.

    Works on columns: the batch's ids are looked up in the plan's record table (binary search
    on their keys), and only the rejected rows' details become Python strings.
    """
    records, copies = records.value(), copies.value()
    tok = batch.column("n_tokens").to_numpy(zero_copy_only=False)
    til = batch.column("n_tiles").to_numpy(zero_copy_only=False)
    too_long = (tok > max_tokens) | (til > max_tiles)
    found = _lookup(records, batch.column("id"))  # -1: id not kept
    at = pa.array(np.maximum(found, 0), pa.int64())
    same_row = (found >= 0) & _same(records.column("manifest").take(at), batch.column("manifest")) \
        & _same(records.column("line").take(at), batch.column("line"))
    count = np.where(same_row, records.column("count").to_numpy()[np.maximum(found, 0)], 0)
    placed = np.flatnonzero(~too_long & same_row & (count > 0))
    reps = count[placed]
    total = int(reps.sum())
    starts = records.column("first").to_numpy()[found[placed]]
    # copy k of placed row j sits at starts[j] + k in `copies`
    copy_at = np.repeat(starts - (np.cumsum(reps) - reps), reps) + np.arange(total)
    take = pa.array(np.repeat(placed, reps), pa.int64())
    out = batch.take(take).append_column("sequence", copies.column("sequence").take(pa.array(copy_at, pa.int64())))
    out = out.append_column("position", copies.column("position").take(pa.array(copy_at, pa.int64())))
    bad = np.flatnonzero(too_long | ~same_row | (count == 0))
    if not len(bad):
        return out
    long_, same = too_long[bad], same_row[bad]
    reasons = np.where(long_, "too_long", np.where(same, "not_drawn", "duplicate_id"))
    details = np.where(same, NOT_DRAWN, DUPLICATE_ID).astype(object)
    details[long_] = [f"{tok[i]} tokens / {til[i]} tiles exceed the budgets {max_tokens} / {max_tiles} "
                      f"(stages.pack.max_tokens / max_tiles)" for i in bad[long_].tolist()]
    n = len(bad)
    rejected = reject_where(batch.take(pa.array(bad, pa.int64())), np.ones(n, bool), stage, reasons, details)
    rejected = rejected.append_column("sequence", pa.nulls(n, pa.int64())).append_column(
        "position", pa.nulls(n, pa.int64()))
    return pa.concat_tables([out, rejected])
