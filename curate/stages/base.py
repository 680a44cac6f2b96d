"""The stage contract every pipeline step follows.

A stage is a small class:
- class attributes `name`, `resources` and `batch_size`;
- `__init__(config, ctx)` only stores configuration (it must pickle: Ray ships it);
- `setup()` loads models or opens clients, once per worker / actor;
- `process_rows(rows)` (or `process_batch(table)`) does the work.

Rows that must leave the pipeline are returned with `reject_reason` set (use
`curate.records.reject`); the runner writes them to `<out>/rejects/`. A stage may also
return new rows (synthesized samples) with `origin = "synthesized:<stage name>"`.
Columns a stage adds are declared in `outputs()` with their Arrow type so every block
of the dataset has the same schema.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curate.records import CORE_SCHEMA


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. `gpus > 0` puts the stage on GPU actors."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or self.memory_gb < 0:
            raise ValueError(f"Resources must be non-negative, got {self}")


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Paths and per-source settings every stage may read. Pickles cleanly."""

    out_dir: str
    media_dir: str
    seed: int = 0
    sources: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> SourceConfig

    @property
    def review_dir(self) -> Path:
        return Path(self.out_dir) / "review"

    def source(self, name: str) -> Any:
        return self.sources.get(name)


class Stage:
    name: ClassVar[str] = "stage"
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 64
    #: True for stages that hold a model: the runner uses an actor pool (setup once per actor).
    uses_actor: ClassVar[bool] = False

    def __init__(self, config: Any, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx
        self._ready = False

    # --- declared columns -------------------------------------------------------------
    def inputs(self) -> list[str]:
        """Columns this stage reads; the runner checks they exist before launch."""
        return ["id"]

    def outputs(self) -> dict[str, pa.DataType]:
        """Columns this stage adds, with their Arrow types."""
        return {}

    # --- lifecycle ----------------------------------------------------------------------
    def setup(self) -> None:
        """Load models, open clients. Called once per worker before the first batch."""

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement process_rows or process_batch")

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = self.process_rows(batch.to_pylist())
        return pa.Table.from_pylist(rows, schema=self.output_schema(batch.schema))

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not self._ready:
            self.setup()
            self._ready = True
        out = self.process_batch(batch)
        return out.cast(self.output_schema(batch.schema))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        schema = input_schema
        for name, dtype in self.outputs().items():
            if schema.get_field_index(name) < 0:
                schema = schema.append(pa.field(name, dtype))
        return schema

    def describe(self) -> str:
        return f"{self.name} (batch {self.batch_size}, {self.resources})"


def check_columns(stage: Stage, schema: pa.Schema) -> None:
    """Fail before launch when a stage needs a column nothing upstream produces."""
    missing = [c for c in stage.inputs() if schema.get_field_index(c) < 0]
    if missing:
        raise ValueError(
            f"stage '{stage.name}' needs columns {missing} that no earlier stage produces; "
            f"available: {schema.names}. Enable the stage that adds them or reorder the recipe."
        )


def core_schema() -> pa.Schema:
    return CORE_SCHEMA


class GlobalStage(Stage):
    """A stage that needs the whole dataset at once (dedupe, mixture).

    Instead of a per-batch `__call__`, it implements `transform(ds) -> ds` over a Ray
    Dataset, using Ray's groupby/shuffle for the global part (never a driver loop over
    rows). It returns every input row, with `reject_reason` set on those that leave.
    """

    def transform(self, ds: Any) -> Any:  # ray.data.Dataset -> ray.data.Dataset
        raise NotImplementedError
