"""The stage contract every pipeline step follows; the runner (curate.runner) acts on it.

A stage is a small class:
- class attributes `name`, `resources` (what one worker needs, and its batch size);
- `__init__(config, ctx)` only stores configuration (it must pickle: Ray ships it);
- `validate()` fails before any work starts (missing model folder, bad value);
- `skip_reason()` says why the stage does nothing with this recipe: the runner then passes
  the rows through without starting a worker;
- `setup()` loads models or opens clients. A stage that defines it runs on an actor pool
  (set up once per actor); a stage without it runs as stateless Ray tasks;
- `process_rows(rows)` (or `process_batch(table)`) does the work;
- `finish(job)` may add facts to the stage's marker once its rows are written;
- `model_label()` names the model a model stage runs, for the progress view.

What it reads of the recipe is declared, so a resumed run re-runs a stage only when something
it reads changed (`fingerprint`, computed from the declarations alone):
- `config_keys`: the keys of its `stages.<section>` it reads (None: the whole section, for a
  stage that has its section to itself; stages that share one each name theirs);
- `source_keys`: the fields of `sources[]` it reads;
- `ctx_keys`: the run-wide values of the RunContext it reads (`RunContext.hash_value`: seed,
  modality_targets, source_order, budgets).
tests/curate/test_stage_keys.py fails when a stage reads a config key it does not declare.

Resources are decided once, by the runner: it takes what the recipe asks
(`requested_resources()`: the class's `resources`, `default_resources()` for a value that
depends on the config, `ray.concurrency` as the default pool size, then the recipe's
`resources` block), settles it against the cluster (curate.runner.grant: a
`gpu_if_available` stage gets a GPU only where the cluster has one) and binds the result
on the stage (`bind_resources`) before shipping it. `setup()` and the work read them with
`resolved_resources()` (thread counts of Whisper and Piper, a batch size); a stage used
outside the runner (a test) gets its requested resources there.

Rows that leave the pipeline keep travelling with `reject_reason` set (curate.records.reject);
the runner writes them to `<out>/rejects/`. A stage may add rows (synthesized samples) with
`origin = "synthesized:<stage name>"`. Columns a stage adds are declared in `outputs()` with
their Arrow type, so every block of the dataset has the same schema; only the stage that
fills a column declares it.

A `GlobalStage` needs the whole dataset (dedupe, the packing plan, the shard write) and
implements `transform(ds, job)` instead of a per-batch call, through the runner's executor
(`job.executor`: map, remote, get, share); no stage imports Ray.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.layout import RunLayout


def footer_stats(footer: Any, column: str) -> list[Any] | None:
    """Per row group, the statistics a Parquet footer keeps of a top-level column (None for a
    group without them), or None when the file has no such column. Statistics are kept per
    leaf column, and nested columns (media) are flattened before later ones: the index of a
    column among the leaves is not its index in the Arrow schema."""
    leaves = [footer.schema.column(i).path for i in range(footer.num_columns)]
    if column not in leaves:
        return None
    i = leaves.index(column)
    return [footer.row_group(g).column(i).statistics for g in range(footer.num_row_groups)]


def footer_max(footer: Any, column: str) -> Any | None:
    """The largest value of `column` in a Parquet file by its footer, None when not recorded."""
    stats = footer_stats(footer, column)
    if not stats or any(s is None or not s.has_min_max for s in stats):
        return None
    return max(s.max for s in stats)


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs, how many workers and how big a batch.

    `actors` is the actor-pool size of a stage with `setup()` (None: autoscale up to one
    actor per free CPU) or the task cap of a stateless stage (None: Ray decides).
    `gpu_if_available` asks for one GPU per actor when the cluster has GPUs (CLIP).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 0.0
    actors: int | None = None
    batch_size: int = 64
    gpu_if_available: bool = False

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or self.memory_gb < 0:
            raise ValueError(f"Resources must be non-negative, got {self}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"Resources.actors must be at least 1 (or null), got {self.actors}")
        if self.batch_size < 1:
            raise ValueError(f"Resources.batch_size must be at least 1, got {self.batch_size}")

    def with_(self, **changes: Any) -> "Resources":
        """A copy with the non-null `changes` applied (a recipe's resources block)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The run folder and the recipe-wide settings every stage may read. Pickles cleanly."""

    out_dir: str
    seed: int = 0
    sources: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> SourceConfig
    modality_targets: dict[str, float] = dataclasses.field(default_factory=dict)
    default_actors: int | None = None  # ray.concurrency: actors/tasks of stages without their own
    #: the packing budgets (stages.pack.max_tokens / max_tiles): the shard index records them
    budgets: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.out_dir))

    @property
    def media_dir(self) -> str:
        return str(self.layout.media)

    @property
    def review_dir(self) -> Path:
        return self.layout.review()

    def source(self, name: str) -> Any:
        return self.sources.get(name)

    def hash_value(self, key: str) -> Any:
        """The run-wide value a stage declares in `ctx_keys`, as its resume hash covers it."""
        if key == "source_order":  # dedupe keeps the sample of the source listed first
            return list(self.sources)
        if key not in CONTEXT_KEYS:
            raise ValueError(f"unknown context key {key!r}; known: {sorted(CONTEXT_KEYS)}")
        return getattr(self, key)


#: what a stage may name in `ctx_keys`
CONTEXT_KEYS = ("seed", "modality_targets", "source_order", "budgets")


@dataclasses.dataclass(frozen=True)
class Job:
    """One execution of a stage, as the runner gives it to `transform` and `finish`."""

    input_dir: Path | None  # the previous stage's output (None for the first stage)
    output_dir: Path  # where the runner writes this stage's rows
    resources: Resources
    executor: Executor | None = None  # the runner's engine: a GlobalStage's only way to Ray


class Executor(Protocol):
    """What a `GlobalStage` may ask of the engine; the runner's RayExecutor implements it.

    Stages never import Ray: they build their plan from these calls and the dataset they are
    handed. Futures (what `remote` functions return) are opaque: pass them to other remote
    functions as top-level arguments (the engine resolves them first), to `get`, or to `share`.
    """

    def cpus(self) -> int:
        """CPUs in the cluster (how many parts to split global work into)."""

    def map(self, ds: Any, fn: Callable[..., pa.Table], resources: Resources, **fn_kwargs: Any) -> Any:
        """`fn(block, **fn_kwargs)` over whole Arrow blocks as stateless tasks with `resources`."""

    def remote(self, fn: Callable[..., Any], num_returns: int = 1, cpus: float = 1.0) -> Callable[..., Any]:
        """`fn` as a remote function: calling it submits a task and returns its future(s)."""

    def get(self, futures: Any) -> Any:
        """The value(s) of a future or a list of futures."""

    def share(self, value: Any) -> "Shared":
        """A handle to a value (or a future) that map and remote functions read with `.value()`."""

    def blocks(self, ds: Any) -> list[Any]:
        """The dataset computed, as futures of its Arrow blocks."""

    def dataset(self, blocks: list[Any]) -> Any:
        """A dataset of Arrow tables or futures of them."""

    def group_moments(self, ds: Any, key: str, column: str) -> dict[Any, dict[str, float]]:
        """key -> {n, mean, std (ddof 0)} of `column`'s non-null values, over the whole dataset."""


class Shared(Protocol):
    def value(self) -> Any:
        """The shared value, in whatever process asks."""


class Stage:
    name: ClassVar[str] = "stage"
    resources: ClassVar[Resources] = Resources()
    #: keys of its config section this stage reads (None: all of them); they enter its resume hash
    config_keys: ClassVar[tuple[str, ...] | None] = None
    #: fields of sources[] this stage reads (they enter its resume hash)
    source_keys: ClassVar[tuple[str, ...]] = ()
    #: run-wide values it reads (CONTEXT_KEYS: "seed" when the seed decides anything in it)
    ctx_keys: ClassVar[tuple[str, ...]] = ()
    #: the key of the stage's config section that holds its `resources` block
    resources_key: ClassVar[str] = "resources"
    #: setup() is cheap and CPU-only (a tokenizer, a 1 MB fastText model): run as plain tasks,
    #: each Ray worker process setting the stage up once. Tasks fuse with the read and the
    #: write and use every CPU; an actor pool holds its CPUs, so on a small machine it cannot
    #: grow past one actor without starving the tasks that feed it.
    setup_in_tasks: ClassVar[bool] = False

    def __init__(self, config: Any, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx
        self._ready = False
        self._resources: Resources | None = None  # what the runner granted (bind_resources)

    # --- declared columns -------------------------------------------------------------
    def inputs(self) -> list[str]:
        """Columns this stage reads; the runner checks they exist before launch."""
        return ["id"]

    def outputs(self) -> dict[str, pa.DataType]:
        """Columns this stage adds, with their Arrow types."""
        return {}

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        schema = input_schema
        for name, dtype in self.outputs().items():
            if schema.get_field_index(name) < 0:
                schema = schema.append(pa.field(name, dtype))
        return schema

    # --- before work --------------------------------------------------------------------
    def validate(self) -> None:
        """Raise (naming the recipe key and the fix) when the stage cannot run."""

    def skip_reason(self) -> str | None:
        """Why this stage has nothing to do with this recipe (None: it runs)."""
        return None

    def input_skip_reason(self, input_dir: Path) -> str | None:
        """Why this stage has nothing to do with these input rows (the previous stage's
        Parquet folder), checked when the stage starts; its rows then pass through as with
        skip_reason(). None: it runs. For a stage that must run one task at a time when it
        has work (download), so that a corpus without such work passes on all cores."""
        return None

    def default_resources(self) -> Resources:
        """The stage's resources before the recipe's `resources` block; may read the config."""
        return self.resources

    def requested_resources(self) -> Resources:
        """What the recipe asks for: default_resources(), `ray.concurrency` as the pool size
        of a stage without its own, then the recipe's block (`stages.<name>.resources`)."""
        res = self.default_resources()
        if res.actors is None and self.ctx.default_actors:
            res = res.with_(actors=self.ctx.default_actors)
        block = getattr(self.config, self.resources_key, None)
        return res.with_(**block.model_dump()) if block is not None else res

    def bind_resources(self, resources: Resources) -> None:
        """The runner's decision (curate.runner.grant), made once before the stage ships."""
        self._resources = resources

    def resolved_resources(self) -> Resources:
        """The resources this stage runs with: those the runner bound, else (a stage used
        outside the runner) those the recipe asks for. setup() reads its thread counts here."""
        return self._resources if self._resources is not None else self.requested_resources()

    def model_label(self) -> str | None:
        """The model this stage runs, as the progress view names it (None: no model)."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What decides this stage's output besides its input: the resume hash covers it. Made
        from the declarations alone (config_keys, source_keys, ctx_keys), never by hand."""
        cfg = self.config.model_dump(mode="json") if hasattr(self.config, "model_dump") else {}
        keys = self.config_keys
        if keys is None:
            keys = [k for k in cfg if not k.endswith("resources")]
        sources = {name: {k: getattr(src, k) for k in self.source_keys}
                   for name, src in self.ctx.sources.items()} if self.source_keys else {}
        return {"stage": self.name, "config": {k: cfg[k] for k in keys}, "sources": sources,
                "context": {k: self.ctx.hash_value(k) for k in self.ctx_keys}}

    @classmethod
    def needs_actor(cls) -> bool:
        """A stage that loads a model in setup() runs on an actor pool (loaded once per actor)."""
        return cls.setup is not Stage.setup and not cls.setup_in_tasks

    # --- work -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models, open clients. Called once per actor before the first batch."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement process_rows or process_batch")

    def rows_to_process(self, batch: pa.Table) -> pa.Array | None:
        """Which rows process_rows must see (a boolean mask; None: all). The others pass
        through as Arrow, never turned into Python objects: a text row in the media stage,
        a row without URLs in the download stage."""
        return None

    def keeps_file(self, footer: Any) -> bool:
        """True when process_batch would return every row of an input file as it is, judged
        from the file's Parquet footer (pyarrow FileMetaData; see footer_max). The runner then
        hard-links the file into the stage's output instead of reading it. Asked only of files
        whose rows are all alive and whose columns already are the stage's output columns."""
        return False

    def process_batch(self, batch: pa.Table) -> pa.Table:
        schema = self.output_schema(batch.schema)
        todo = self.rows_to_process(batch)
        if todo is None:
            return pa.Table.from_pylist(self.process_rows(batch.to_pylist()), schema=schema)
        todo = pc.fill_null(todo, False)
        n_todo = pc.sum(todo).as_py() or 0
        if n_todo == 0:
            return widen(batch, schema)
        done = pa.Table.from_pylist(self.process_rows(batch.filter(todo).to_pylist()), schema=schema)
        if len(done) != n_todo:
            raise RuntimeError(f"stage {self.name}: process_rows must return one row per row it is given "
                               f"when rows_to_process selects rows ({len(done)} for {n_todo})")
        if n_todo == len(batch):
            return done
        merged = pa.concat_tables([done, widen(batch.filter(pc.invert(todo)), schema)])
        mask = todo.to_numpy(zero_copy_only=False)
        where = np.concatenate((np.flatnonzero(mask), np.flatnonzero(~mask)))  # batch position of each merged row
        return merged.take(pa.array(np.argsort(where, kind="stable")))  # back in the batch's order

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        out = self.process_batch(batch)
        return out.cast(self.output_schema(batch.schema))

    def finish(self, job: Job) -> dict[str, Any]:
        """Facts for the stage's marker, computed on the driver once its rows are written."""
        return {}

    def describe(self) -> str:
        return self.name


class GlobalStage(Stage):
    """A stage that needs the whole dataset at once (dedupe, the packing plan, the shard write).

    Instead of a per-batch `__call__`, it implements `transform(ds, job) -> (ds, info)` over the
    dataset it is handed, with the executor `job.executor` for the global part (tasks over
    blocks, never a driver loop over rows); `info` goes into its marker. It returns every input
    row, with `reject_reason` set on those that leave.
    """

    @classmethod
    def needs_actor(cls) -> bool:
        return False

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:  # ray.data.Dataset
        raise NotImplementedError


def model_name(path: str | None, default: str) -> str:
    """A model's label: the last part of its folder or file path, else the packaged default's name."""
    return Path(str(path)).name if path else default


def widen(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`: the columns it lacks added as nulls (a stage's new outputs)."""
    for field in schema:
        if table.schema.get_field_index(field.name) < 0:
            table = table.append_column(field.name, pa.nulls(len(table), field.type))
    return table.select(schema.names).cast(schema)


def check_columns(stage: Stage, schema: pa.Schema) -> None:
    """Fail before launch when a stage needs a column nothing upstream produces."""
    missing = [c for c in stage.inputs() if schema.get_field_index(c) < 0]
    if missing:
        raise ValueError(
            f"stage '{stage.name}' needs columns {missing} that no earlier stage produces; "
            f"available: {schema.names}. Enable the stage that adds them or reorder the recipe."
        )
