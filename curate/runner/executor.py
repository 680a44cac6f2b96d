"""The Ray side of the runner: how a stage's work becomes Ray tasks and actors.

`grant` settles a stage's requested resources against the cluster once; `map_options` turns
them into map_batches arguments; `apply_stage` runs a stage over a dataset (an actor pool
for a stage with setup(), tasks otherwise, `transform` for a GlobalStage); `RayExecutor` is
the engine a GlobalStage is handed (curate.stages.base.Executor), so no stage imports Ray.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import pyarrow as pa

from curate.errors import UserError
from curate.stages.base import GlobalStage, Job, Resources, Stage


def grant(stage: Stage, cluster: dict[str, float]) -> Resources:
    """The resources `stage` runs with, decided once per run: what the recipe asks
    (Stage.requested_resources) settled against the cluster (`ray.cluster_resources()`): a
    `gpu_if_available` stage gets one GPU, and no CPU, where the cluster has a GPU."""
    res = stage.requested_resources()
    if not res.gpu_if_available:
        return res
    if not res.gpus and cluster.get("GPU", 0) >= 1:
        return res.with_(gpus=1, cpus=0, gpu_if_available=False)
    return res.with_(gpu_if_available=False)


def check_actor_fits(stage: Stage, res: Resources, cluster: dict[str, float]) -> None:
    """Fail before work when one actor of a stage would hold every CPU of the cluster: it then
    waits for input that the tasks left without a CPU never bring (a test with audio_qa's
    cpus at the cluster's 2 CPUs hung without an error; two actors of 1 CPU each ran)."""
    total = cluster.get("CPU", 0)
    if stage.needs_actor() and not res.gpus and total and res.cpus >= total:
        raise UserError(f"stage {stage.name}: resources.cpus={res.cpus:g} per actor is every CPU of the cluster "
                        f"({total:g}), so nothing is left to feed it; ask for at most {max(total - 1, 1):g} "
                        f"or run on a bigger cluster")


def map_options(res: Resources, actor: bool, whole_blocks: bool = False,
                cluster_cpus: int = 1) -> dict[str, Any]:
    """Ray Data map_batches arguments for a stage's resources (as `grant` decided them).

    whole_blocks: no Ray batch size, for vectorised functions and for callers that slice
    themselves. Ray fuses a read into the map that follows it only when the map has no batch
    size; unfused, the read runs as separate tasks that hold CPUs the map then waits for.
    An actor stage without a pool size autoscales up to one actor per `cluster_cpus` it can hold.
    """
    import ray

    opts: dict[str, Any] = {"batch_format": "pyarrow", "batch_size": None if whole_blocks else res.batch_size,
                            "num_cpus": res.cpus}
    if res.memory_gb:
        opts["memory"] = res.memory_gb * 1024**3
    if res.gpus:
        opts["num_gpus"] = res.gpus
    if actor:
        size = res.actors
        if size is None:
            most = max(1, int(cluster_cpus // (res.cpus if res.cpus > 0 else 1)))
            opts["compute"] = ray.data.ActorPoolStrategy(min_size=1, max_size=most)
        else:
            opts["compute"] = ray.data.ActorPoolStrategy(size=size)
    elif res.actors is not None:
        opts["compute"] = ray.data.TaskPoolStrategy(size=res.actors)
    return opts


@dataclass(frozen=True)
class SharedRef:
    """A value in Ray's object store that a task reads with `.value()` (curate.stages.base.Shared).

    Arrow tables come back without a copy, so every batch of a map may read a large table."""

    ref: Any

    def value(self) -> Any:
        import ray

        return ray.get(self.ref)


class RayExecutor:
    """The engine a GlobalStage is handed (curate.stages.base.Executor): the stages' only way to Ray."""

    def cluster(self) -> dict[str, float]:
        """The cluster's resources (CPU, GPU, memory...), as Ray counts them."""
        import ray

        return dict(ray.cluster_resources())

    def cpus(self) -> int:
        return max(1, int(self.cluster().get("CPU", 1)))

    def map(self, ds: Any, fn: Callable[..., pa.Table], resources: Resources, **fn_kwargs: Any) -> Any:
        return ds.map_batches(fn, **map_options(resources, actor=False, whole_blocks=True), fn_kwargs=fn_kwargs)

    def remote(self, fn: Callable[..., Any], num_returns: int = 1, cpus: float = 1.0) -> Callable[..., Any]:
        import ray

        return ray.remote(num_returns=num_returns, num_cpus=cpus)(fn).remote

    def get(self, futures: Any) -> Any:
        import ray

        return ray.get(futures)

    def share(self, value: Any) -> SharedRef:
        import ray

        return SharedRef(value if isinstance(value, ray.ObjectRef) else ray.put(value))

    def blocks(self, ds: Any) -> list[Any]:
        return list(ds.materialize().to_arrow_refs())

    def dataset(self, blocks: list[Any]) -> Any:
        import ray

        if blocks and all(isinstance(b, pa.Table) for b in blocks):
            return ray.data.from_arrow(blocks)
        return ray.data.from_arrow_refs(blocks)

    def group_moments(self, ds: Any, key: str, column: str) -> dict[Any, dict[str, float]]:
        from ray.data.aggregate import Count, Mean, Std

        rows = ds.groupby(key).aggregate(
            Count(column, ignore_nulls=True, alias_name="n"),
            Mean(column, alias_name="mean"),
            Std(column, ddof=0, alias_name="std"),
        ).take_all()
        return {r[key]: {"n": int(r["n"]), "mean": float(r["mean"]), "std": float(r["std"] or 0.0)} for r in rows}


class _StageActor:
    """Actor wrapper: the stage's setup() runs once per actor, in its constructor."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class _StageTask:
    """Task wrapper of a plain stage: whole blocks in, the stage called on slices of its batch size.

    The map gets whole blocks (no Ray batch size) because Ray does not fuse a read into a
    map that has one: the read then runs as its own tasks, holding a CPU the stage needs.
    Fused, one task reads a file, runs the stage and writes its output. The slices keep
    each call, and its Python objects, at the stage's batch size.

    A `setup_in_tasks` stage is set up once per worker process: Ray reuses worker processes
    between tasks, so the set-up copy is kept in the process under a key made once per stage
    run; a later run (or stage) brings a new key and the old copy is dropped.
    """

    _cache: ClassVar[dict[str, Stage]] = {}

    def __init__(self, stage: Stage, batch_size: int | None) -> None:
        self.stage = stage
        self.batch_size = batch_size
        self.key = uuid.uuid4().hex

    def __call__(self, block: pa.Table) -> pa.Table:
        stage = self._cache.get(self.key)
        if stage is None:
            self._cache.clear()
            stage = self._cache[self.key] = self.stage
            stage.ensure_setup()
        step = self.batch_size or len(block)
        if len(block) <= step:
            return stage(block)
        return pa.concat_tables([stage(block.slice(i, step)) for i in range(0, len(block), step)])


def apply_stage(stage: Stage, ds: Any, job: Job, skip: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The stage's Ray plan over `ds`, and facts for its marker (the one place a stage is executed)."""
    if skip:
        return ds, {}  # nothing to do: rows pass through, no worker starts
    if job.executor is None:
        job = dataclasses.replace(job, executor=RayExecutor())
    if isinstance(stage, GlobalStage):
        return stage.transform(ds, job)
    if stage.needs_actor():
        opts = map_options(job.resources, actor=True, cluster_cpus=job.executor.cpus())
        return ds.map_batches(_StageActor, fn_constructor_args=(stage,), **opts), {}
    opts = map_options(job.resources, actor=False, whole_blocks=True)  # _StageTask slices them
    # a subclass named after the stage, so Ray's operator, progress and process names say
    # "MapBatches(MediaStage)", not "MapBatches(_StageTask)"
    task = type(type(stage).__name__, (_StageTask,), {})
    return ds.map_batches(task(stage, job.resources.batch_size), **opts), {}
