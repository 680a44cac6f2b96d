"""Run a recipe on Ray Data: stage after stage, each persisted as Parquet, resumable.

The runner is the only place that executes. For every enabled stage, in order, it:
1. checks the stage's input columns and calls `validate()` before any work starts;
2. hashes what the stage reads (`Stage.fingerprint`: its recipe keys, the source fields and
   the seed it declares) together with the upstream hash; a stage whose marker carries the
   same hash is done and is skipped on a re-run, so changing `sources[].repeat` re-runs only
   the packing steps, never transcription or LLM scoring;
3. runs it: a stage with `skip_reason()` (or `input_skip_reason()` of its input rows) passes
   its rows through without starting a worker;
   a `GlobalStage` builds its own plan through the executor (RayExecutor); a stage with
   `setup()` runs on an actor pool, any other as stateless tasks, with the resources `grant`
   decided for it once (bound on the stage before it ships; map_options turns them into Ray's
   arguments);
4. writes its rows atomically to `work/NN-<stage>/`, its rejects to `rejects/<stage>.parquet`
   and its marker (rows, kept, rejected by reason, seconds, and the stage's own facts).
The run folder's paths are in curate.layout.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from curate.errors import UserError
from curate.layout import RunLayout, read_marker, write_json_atomic, write_parquet_atomic, write_text_atomic
from curate.manifest import RAW_SCHEMA, check_manifests, manifest_chunks
from curate.progress import ProgressView, count_rows
from curate.recipe import Recipe
from curate.records import CORE_SCHEMA, REJECT_COLUMNS
from curate.review import clear_review
from curate.runner import files as stage_files
from curate.runner.executor import RayExecutor, apply_stage, check_actor_fits, grant, map_options
from curate.runner.files import input_files, link_or_copy, unchanged_files, written_schemas
from curate.stages.base import GlobalStage, Job, RunContext, Stage, check_columns, widen
from curate.stages.ingest import stop_if_nothing_ingested
from curate.stages.registry import STAGES, StageSpec

log = logging.getLogger("curate")


def load_class(spec: StageSpec) -> type[Stage]:
    module, _, cls = spec.cls.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ValueError(f"stage '{spec.name}' is enabled but {module} is not part of this install; "
                         f"set stages.{spec.section}.enabled=false") from None


def build_stages(recipe: Recipe, ctx: RunContext) -> list[Stage]:
    """Instantiate the enabled stages in pipeline order."""
    stages: list[Stage] = []
    for spec in STAGES:
        cfg = getattr(recipe.stages, spec.section)
        if not cfg.enabled:
            if spec.required:
                raise ValueError(f"stages.{spec.section}.enabled=false: this stage cannot be turned off "
                                 f"(every run ends in tokenized, packed shards)")
            continue
        stage = load_class(spec)(cfg, ctx)
        assert stage.name == spec.name, f"{spec.cls} is named {stage.name!r}, listed as {spec.name!r}"
        stages.append(stage)
    return stages


def stage_hash(stage: Stage, upstream: str) -> str:
    """The resume key: what the stage reads and everything upstream of it."""
    payload = json.dumps({"stage": stage.fingerprint(), "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after Ray's long retry loop, when a host:port address does not answer."""
    import socket

    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); check the address "
                        f"(`ray status` on the head node prints it), or drop --address / RAY_ADDRESS to run "
                        f"on a local Ray") from None


class Runner:
    def __init__(self, recipe: Recipe, out_dir: str | Path, address: str | None = None,
                 base_dir: str | Path | None = None, view: ProgressView | None = None,
                 verbose: bool = False) -> None:
        self.recipe = recipe
        self.view = view or ProgressView(quiet=True)  # the CLI passes a live view (curate.progress)
        self.verbose = verbose  # Ray's own progress bars and logs on the terminal
        self.layout = RunLayout(Path(out_dir).resolve())
        self.out = self.layout.root
        self.address = address
        self.base = Path(base_dir or os.getcwd()).resolve()
        self.ctx = RunContext(out_dir=str(self.out), seed=recipe.seed, sources=recipe.source_map(),
                              modality_targets=dict(recipe.modality_targets),
                              default_actors=recipe.ray.concurrency,
                              budgets={"max_tokens": recipe.stages.pack.max_tokens,
                                       "max_tiles": recipe.stages.pack.max_tiles})
        self.summary: dict[str, Any] = {"stages": [], "skipped": {}}
        self.current_stage: str | None = None  # the stage running now (named in error messages)

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> tuple[dict[str, list[Path]], list[Stage]]:
        """Everything that can fail before work starts: manifests, stage columns, model paths."""
        manifests = check_manifests(self.recipe.sources, self.base)
        stages = build_stages(self.recipe, self.ctx)
        schema = RAW_SCHEMA
        for stage in stages:
            stage.validate()
            stage.requested_resources()  # a bad resources block fails here, before Ray starts
            check_columns(stage, schema)
            schema = stage.output_schema(schema)
        self.check_out_dir()
        return manifests, stages

    def check_out_dir(self) -> None:
        """The run folder is a folder we can write (checked by writing, as permission bits lie to root)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder for the run (it is created if missing)")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"--out {out} cannot be written ({e.strerror or e}); choose a folder on a writable "
                            f"file system") from None

    def init_ray(self) -> None:
        import ray

        address = self.address or self.recipe.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            check_reachable(address)  # also when Ray is already up in this process: a wrong address is an error
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
            if address:
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, TimeoutError) as e:
                    raise UserError(f"cannot connect to the Ray cluster at {address}: {e}. Start one with "
                                    f"`ray start --head`, or drop --address / RAY_ADDRESS to run on a local "
                                    f"Ray") from None
            else:  # "local": never join a cluster that `ray start` left on this machine by accident
                ray.init(address="local", num_cpus=self.recipe.ray.num_cpus,
                         object_store_memory=self.recipe.ray.object_store_memory, **kwargs)
        from ray.data.context import ShuffleStrategy

        ctx = ray.data.DataContext.get_current()
        # The runner's own view (curate.progress) shows progress; Ray's bars, plans and logs
        # go to <out>/logs/ unless --verbose.
        ctx.enable_progress_bars = self.verbose
        ctx.print_on_execution_start = self.verbose
        if not self.verbose:
            route_ray_logs(self.layout.root / "logs")
        # Ray Data skips a UDF on an empty block and passes the block on with its old schema; the
        # hash shuffle then fails on a missing key column (dedupe's buckets, the shard groupby).
        # The sort-based shuffle copes with such blocks.
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        manifests, stages = self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.layout.recipe, yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False))
        self.init_ray()
        executor = RayExecutor()
        cluster = executor.cluster()
        for stage in stages:  # the one place resources are decided; setup() reads them
            stage.bind_resources(grant(stage, cluster))

        skips = [stage.skip_reason() for stage in stages]
        for stage, skip in zip(stages, skips):
            if not skip:
                check_actor_fits(stage, stage.resolved_resources(), cluster)
        schemas = written_schemas(stages, skips)
        upstream = ""
        prev_dir: Path | None = None
        for i, stage in enumerate(stages):
            schema, skip = schemas[i], skips[i]
            upstream = stage_hash(stage, upstream)
            stage_dir = self.layout.stage_dir(i, stage.name)
            if skip:
                log.warning("stage %s skipped: %s", stage.name, skip)
                self.summary["skipped"][stage.name] = skip
            marker = read_marker(stage_dir)
            if marker is not None and marker.get("hash") == upstream:
                log.info("stage %s: done in an earlier run (config hash %s), skipping", stage.name, upstream)
                self.summary["stages"].append(marker | {"resumed": True})
                self.view.stage_resumed(marker)
            else:
                if not skip and prev_dir is not None:
                    skip = stage.input_skip_reason(prev_dir)
                    if skip:
                        log.info("stage %s: skipped for this input: %s", stage.name, skip)
                        self.summary["skipped"][stage.name] = skip
                job = Job(prev_dir, stage_dir, stage.resolved_resources(), executor)
                self.run_stage(stage, job, schema, upstream, manifests, skip)
            prev_dir = stage_dir
            if i == 0:
                stop_if_nothing_ingested(self.layout, self.summary["stages"][-1])
        from curate.stats import compute_stats

        stats = compute_stats(self.out)
        stats["wall_seconds"] = round(time.perf_counter() - start, 2)
        stats["skipped_stages"] = self.summary["skipped"]
        # this run's work: a stage finished by an earlier run took no time now
        stats["resumed_stages"] = [s["stage"] for s in self.summary["stages"] if s.get("resumed")]
        stats["stage_seconds"] = {s["stage"]: 0.0 if s.get("resumed") else s["seconds"] for s in self.summary["stages"]}
        write_json_atomic(self.layout.stats, stats)
        from curate.report.html import write_report

        write_report(self.out, stats)
        return stats

    def input_dataset(self, job: Job, pieces: list[dict[str, Any]], files: list[Path] | None = None) -> Any:
        """The stage's input rows: the manifest pieces for the first stage, else the alive rows
        of the earlier stage's files (or of `files`, some of them)."""
        import ray

        if job.input_dir is None:
            return ray.data.from_items(pieces, override_num_blocks=max(1, len(pieces))).map_batches(
                stage_files.read_manifest, batch_format="pyarrow")
        # one task per file, fused with the stage and its write: Ray's read_parquet packs files
        # into read tasks of 128 MiB, so a stage of 100k text rows ran as two tasks, one of them
        # long after the other had finished; files hold at most ROWS_PER_FILE rows
        paths = [str(p) for p in (files if files is not None else input_files(job.input_dir))]
        return ray.data.from_items([{"path": f} for f in paths], override_num_blocks=max(1, len(paths))).map_batches(
            stage_files.read_alive, batch_format="pyarrow")

    def run_stage(self, stage: Stage, job: Job, schema: pa.Schema, config_hash: str,
                  manifests: dict[str, list[Path]], skip: str | None) -> None:
        log.info("stage %s: running (%s)", stage.name, stage.describe())
        self.current_stage = stage.name
        t0 = time.perf_counter()
        self.invalidate(job.output_dir)
        # the first stage reads the manifests in pieces; listing them counts their lines (one pass)
        pieces = [c for s, ps in manifests.items() for p in ps for c in manifest_chunks(s, p)] \
            if job.input_dir is None else []
        tmp = self.layout.tmp(job.output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        model = stage.model_label() if not skip else None
        device = ("gpu" if job.resources.gpus else "cpu") if model else None
        self.view.stage_started(stage.name, self.expected_rows(stage, job, pieces), model=model, device=device,
                                output=tmp)
        # input files that already are the stage's output (every row alive, the same columns,
        # and the stage skipped or saying it keeps them: keeps_file) are hard-linked; only the
        # others go through Ray, which drops their rejects
        unchanged, files = [], None
        if job.input_dir and (skip or not isinstance(stage, GlobalStage)):
            unchanged, files = unchanged_files(job.input_dir, schema, None if skip else stage.keeps_file)
        info: dict[str, Any] = {}
        if files is None or files:
            ds = self.input_dataset(job, pieces, files)
            out, info = apply_stage(stage, ds, job, skip)
            out = out.map_batches(widen, batch_format="pyarrow", fn_kwargs={"schema": schema})
            # one row group per file: without row_group_size, Arrow writes every chunk of a block
            # as its own row group (a stage's batches: 89 groups of ~80 rows in a tokenize file),
            # and reading such a file back took 4-5x as long as reading one group
            rows = stage_files.ROWS_PER_FILE
            out.write_parquet(str(tmp), max_rows_per_file=rows, row_group_size=rows)
        tmp.mkdir(parents=True, exist_ok=True)
        for path in unchanged:
            link_or_copy(path, tmp / path.name)
        if unchanged:
            info["linked_files"] = len(unchanged)
        pq.write_table(schema.empty_table(), tmp / "part-empty.parquet")  # keeps the schema when no row is left
        os.replace(tmp, job.output_dir)
        if not skip:
            info |= stage.finish(job)
        marker = self.finish_stage(stage.name, job.output_dir, config_hash, time.perf_counter() - t0,
                                   info | ({"skipped": skip} if skip else {}))
        self.summary["stages"].append(marker)
        self.view.stage_finished(marker)
        log.info("stage %s: %d rows, %d kept, %d rejected in %.1fs", stage.name, marker["rows"], marker["kept"],
                 sum(marker["rejected"].values()), marker["seconds"])

    def expected_rows(self, stage: Stage, job: Job, pieces: list[dict[str, Any]]) -> int | None:
        """Rows the stage will write, for the progress view (None: not known in advance)."""
        if job.input_dir is None:
            return sum(c["lines"] for c in pieces)
        if isinstance(stage, GlobalStage) and stage.name in ("pack_plan", "shard"):
            return None  # one row per copy / per shard
        marker = read_marker(job.input_dir)
        return int(marker["kept"]) if marker and "kept" in marker else count_rows(job.input_dir) or None

    # ------------------------------------------------------------------ markers and rejects
    def invalidate(self, stage_dir: Path) -> None:
        """Drop this stage's old output and everything downstream (their inputs change)."""
        if not self.layout.work.exists():
            return
        for d in sorted(self.layout.work.iterdir()):
            if d.name >= stage_dir.name:
                shutil.rmtree(d, ignore_errors=True)
                stage = d.name.split("-", 1)[-1].removesuffix(".tmp")
                self.layout.rejects(stage).unlink(missing_ok=True)
                clear_review(self.layout, stage)

    def finish_stage(self, name: str, stage_dir: Path, config_hash: str, seconds: float,
                     info: dict[str, Any]) -> dict[str, Any]:
        dataset = pads.dataset(str(stage_dir), format="parquet")
        reasons = dataset.to_table(columns=["reject_reason"]).column("reject_reason")
        counts = pc.value_counts(reasons.drop_null()).to_pylist() if reasons.null_count < len(reasons) else []
        rejected = {c["values"]: c["counts"] for c in counts}
        if rejected:
            rej = dataset.to_table(columns=REJECT_COLUMNS, filter=pc.field("reject_reason").is_valid())
            write_parquet_atomic(self.layout.rejects(name), rej.sort_by([("source", "ascending"), ("id", "ascending")]))
        marker = {"stage": name, "hash": config_hash, "rows": len(reasons), "kept": reasons.null_count,
                  "rejected": rejected, "seconds": round(seconds, 3)} | info
        write_json_atomic(self.layout.marker(stage_dir), marker)
        return marker


def route_ray_logs(log_dir: Path) -> None:
    """Ray's and Ray Data's Python loggers, and Python warnings, write to `log_dir`, not the terminal."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / "ray.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("ray", "ray.data", "py.warnings"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        if not any(getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers):
            logger.addHandler(handler)
        logger.propagate = False


def run_recipe(recipe: Recipe, out_dir: str | Path, address: str | None = None) -> dict[str, Any]:
    return Runner(recipe, out_dir, address).run()


__all__ = ["Runner", "run_recipe", "build_stages", "load_class", "apply_stage", "stage_hash", "grant", "map_options",
           "RayExecutor", "link_or_copy", "unchanged_files", "written_schemas", "STAGES", "CORE_SCHEMA"]
