"""Run a recipe on Ray Data: stage after stage, each persisted as Parquet, resumable.

Layout of a run folder (`--out`):
  work/NN-<stage>/       every row the stage produced (Parquet) + _DONE.json marker
  rejects/<stage>.parquet  rows that left the pipeline at that stage (id, source, reason, detail)
  shards/                shard-NNNNNN.tar, index.json, contents.parquet
  media/                 content-addressed media store
  review/                flagged samples kept for manual review
  recipe.resolved.yaml, stats.json
A stage whose marker carries the same config hash (its config + everything upstream) is
skipped on a re-run; a stage without a marker (interrupted) is recomputed from its input.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from curate.manifest import RAW_SCHEMA, check_manifests, read_lines
from curate.recipe import Recipe
from curate.records import CORE_SCHEMA, REJECT_COLUMNS
from curate.stages.base import GlobalStage, RunContext, Stage, check_columns

log = logging.getLogger("curate")

# (recipe key, class) in pipeline order; modules are imported only when the stage is enabled.
STAGES = [
    ("ingest", "curate.stages.ingest:IngestStage"),
    ("download", "curate.stages.download:DownloadStage"),
    ("media", "curate.stages.media:MediaStage"),
    ("transcribe", "curate.stages.transcribe:TranscribeStage"),
    ("filter", "curate.stages.filter:FilterStage"),
    ("dedupe", "curate.stages.dedupe:DedupeStage"),
    ("score", "curate.stages.score:ScoreStage"),
    ("audio_qa", "curate.stages.audio_qa:AudioQAStage"),
    ("tokenize", "curate.stages.tokenize:TokenizeStage"),
]
MARKER = "_DONE.json"


def load_class(spec: str) -> type:
    module, _, cls = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        key = module.rsplit(".", 1)[-1]
        raise ValueError(f"stage '{key}' is enabled but {module} is not part of this install; "
                         f"set stages.{key}.enabled=false") from None


def build_stages(recipe: Recipe, ctx: RunContext) -> list[Stage]:
    """Instantiate the enabled stages in order; model stages may ask to be skipped."""
    stages: list[Stage] = []
    for key, spec in STAGES:
        cfg = getattr(recipe.stages, key)
        if not cfg.enabled:
            continue
        stages.append(load_class(spec)(cfg, ctx))
    return stages


class _StageActor:
    """Actor wrapper: the model is loaded once per actor in __init__."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()
        stage._ready = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def _alive(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_null(batch.column("reject_reason")))


def _conform_fn(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [batch.column(f.name).cast(f.type) if f.name in batch.column_names else pa.nulls(len(batch), f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _read_manifest(item: dict[str, Any]) -> list[dict[str, Any]]:
    return list(read_lines(item["source"], item["manifest"]))


class Runner:
    def __init__(self, recipe: Recipe, out_dir: str | Path, address: str | None = None,
                 base_dir: str | Path | None = None) -> None:
        self.recipe = recipe
        self.out = Path(out_dir).resolve()
        self.address = address
        self.base = Path(base_dir or os.getcwd()).resolve()
        self.work = self.out / "work"
        self.rejects = self.out / "rejects"
        self.ctx = RunContext(out_dir=str(self.out), media_dir=str(self.out / "media"), seed=recipe.seed,
                              sources=recipe.source_map())
        self.summary: dict[str, Any] = {"stages": [], "skipped": {}}

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> tuple[dict[str, list[Path]], list[Stage]]:
        """Everything that can fail before work starts: manifests, stage columns, model paths."""
        manifests = check_manifests(self.recipe.sources, self.base)
        stages = build_stages(self.recipe, self.ctx)
        schema = RAW_SCHEMA
        for stage in stages:
            if hasattr(stage, "validate"):
                stage.validate()
            check_columns(stage, schema)
            schema = stage.output_schema(schema)
        return manifests, stages

    def init_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            address = self.address or self.recipe.ray.address or os.environ.get("RAY_ADDRESS")
            kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=self.recipe.ray.num_cpus, object_store_memory=self.recipe.ray.object_store_memory,
                         **kwargs)
        from ray.data.context import ShuffleStrategy

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = os.environ.get("CURATE_PROGRESS", "1") == "1"
        # Ray Data skips a UDF on an empty block and passes the block on with its old schema; the
        # hash shuffle then fails on a missing key column (dedupe's buckets, the shard groupby).
        # The sort-based shuffle copes with such blocks.
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        manifests, stages = self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.resolved.yaml").write_text(yaml.safe_dump(self.recipe.model_dump(mode="json"),
                                                                      sort_keys=False))
        self.init_ray()
        import ray

        schema: pa.Schema = RAW_SCHEMA
        upstream = ""
        prev_dir: Path | None = None
        for i, stage in enumerate(stages):
            schema = stage.output_schema(schema)
            upstream = self.recipe.stage_hash(stage.name, upstream)
            stage_dir = self.work / f"{i:02d}-{stage.name}"
            skip = getattr(stage, "skip_reason", lambda: None)()
            if skip:
                log.warning("stage %s skipped: %s", stage.name, skip)
                self.summary["skipped"][stage.name] = skip
            if self.is_done(stage_dir, upstream):
                log.info("stage %s: done in an earlier run (config hash %s), skipping", stage.name, upstream)
                self.summary["stages"].append(self.read_marker(stage_dir) | {"resumed": True})
            else:
                if prev_dir is None:
                    items = [{"source": s, "manifest": str(p)} for s, ps in manifests.items() for p in ps]
                    ds = ray.data.from_items(items).flat_map(_read_manifest)
                else:
                    ds = self.read_alive(prev_dir)
                self.run_stage(stage, ds, stage_dir, schema, upstream)
            prev_dir = stage_dir
        assert prev_dir is not None
        from curate.stages.pack import PackStep

        PackStep(self.recipe, self.ctx, self.out).run(prev_dir, upstream, self.summary)
        from curate.stats import compute_stats

        stats = compute_stats(self.out)
        stats["wall_seconds"] = round(time.perf_counter() - start, 2)
        stats["skipped_stages"] = self.summary["skipped"]
        (self.out / "stats.json").write_text(json.dumps(stats, indent=2))
        from curate.report.html import write_report

        write_report(self.out, stats)
        return stats

    def read_alive(self, stage_dir: Path):
        import ray

        return ray.data.read_parquet(str(stage_dir)).map_batches(_alive, batch_format="pyarrow")

    def run_stage(self, stage: Stage, ds: Any, stage_dir: Path, schema: pa.Schema, config_hash: str) -> None:
        log.info("stage %s: running (%s)", stage.name, stage.describe())
        t0 = time.perf_counter()
        self.invalidate(stage_dir)
        out = self.apply(stage, ds)
        out = out.map_batches(_conform_fn, batch_format="pyarrow", fn_kwargs={"schema": schema})
        tmp = stage_dir.with_name(stage_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        out.write_parquet(str(tmp))
        tmp.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), tmp / "part-empty.parquet")  # keeps the schema when no row is left
        os.replace(tmp, stage_dir)
        marker = self.finish_stage(stage.name, stage_dir, config_hash, time.perf_counter() - t0)
        self.summary["stages"].append(marker)
        log.info("stage %s: %d rows, %d kept, %d rejected in %.1fs", stage.name, marker["rows"], marker["kept"],
                 sum(marker["rejected"].values()), marker["seconds"])

    def apply(self, stage: Stage, ds: Any) -> Any:
        if isinstance(stage, GlobalStage):
            return stage.transform(ds)
        res = stage.resources
        kwargs: dict[str, Any] = {"batch_format": "pyarrow", "batch_size": stage.batch_size, "num_cpus": res.cpus}
        if res.memory_gb:
            kwargs["memory"] = res.memory_gb * 1024**3
        if stage.uses_actor or res.gpus:
            if res.gpus:
                kwargs["num_gpus"] = res.gpus
            return ds.map_batches(_StageActor, fn_constructor_args=(stage,),
                                  concurrency=self.recipe.ray.concurrency or 1, **kwargs)
        if self.recipe.ray.concurrency:
            kwargs["concurrency"] = self.recipe.ray.concurrency
        return ds.map_batches(stage, **kwargs)

    # ------------------------------------------------------------------ markers and rejects
    def is_done(self, stage_dir: Path, config_hash: str) -> bool:
        marker = stage_dir / MARKER
        return marker.exists() and json.loads(marker.read_text()).get("hash") == config_hash

    def read_marker(self, stage_dir: Path) -> dict[str, Any]:
        return json.loads((stage_dir / MARKER).read_text())

    def invalidate(self, stage_dir: Path) -> None:
        """Drop this stage's old output and everything downstream (their inputs change)."""
        if self.work.exists():
            for d in sorted(self.work.iterdir()):
                if d.name >= stage_dir.name:
                    shutil.rmtree(d, ignore_errors=True)
                    stage = d.name.split("-", 1)[-1].removesuffix(".tmp")
                    (self.rejects / f"{stage}.parquet").unlink(missing_ok=True)
        (self.out / "shards" / MARKER).unlink(missing_ok=True)  # packing reads what we recompute

    def finish_stage(self, name: str, stage_dir: Path, config_hash: str, seconds: float) -> dict[str, Any]:
        import pyarrow.compute as pc

        dataset = pads.dataset(str(stage_dir), format="parquet")
        reasons = dataset.to_table(columns=["reject_reason"]).column("reject_reason")
        counts = pc.value_counts(reasons.drop_null()).to_pylist() if reasons.null_count < len(reasons) else []
        rejected = {c["values"]: c["counts"] for c in counts}
        self.rejects.mkdir(parents=True, exist_ok=True)
        rej = dataset.to_table(columns=REJECT_COLUMNS, filter=pc.field("reject_reason").is_valid())
        tmp = self.rejects / f".{name}.parquet.tmp"
        pq.write_table(rej.sort_by([("source", "ascending"), ("id", "ascending")]), tmp)
        os.replace(tmp, self.rejects / f"{name}.parquet")
        marker = {"stage": name, "hash": config_hash, "rows": len(reasons), "kept": reasons.null_count,
                  "rejected": rejected, "seconds": round(seconds, 3)}
        (stage_dir / MARKER).write_text(json.dumps(marker, indent=2))
        return marker


def run_recipe(recipe: Recipe, out_dir: str | Path, address: str | None = None) -> dict[str, Any]:
    return Runner(recipe, out_dir, address).run()


__all__ = ["Runner", "run_recipe", "build_stages", "STAGES", "CORE_SCHEMA"]
