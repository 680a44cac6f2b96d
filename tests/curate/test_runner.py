"""The runner's own rules: skip pass-through, resources, actor or task, markers, resume hashes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from curate.layout import RunLayout, read_marker, write_json_atomic
from curate.recipe import load_recipe
from curate.runner import STAGES, build_stages, map_options, stage_hash
from curate.stages.base import GlobalStage, Resources, Stage
from tests.builders import apply_on_ray, make_ctx, make_row

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml"


class Touching(Stage):
    """A model-like stage: setup() leaves a file, so a test can see whether a worker started."""

    name: ClassVar[str] = "touching"

    def __init__(self, config: Any, ctx: Any, flag: Path, skip: str | None = None) -> None:
        super().__init__(config, ctx)
        self.flag, self.skip = flag, skip

    def skip_reason(self) -> str | None:
        return self.skip

    def setup(self) -> None:
        self.flag.write_text("set up")

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            r["conversations"][1]["value"] = "changed"
        return rows


def test_a_skipped_stage_passes_rows_through_without_starting_a_worker(ray_session, tmp_path):
    from curate.runner import apply_stage
    from curate.stages.base import Job

    flag = tmp_path / "flag"
    stage = Touching(None, make_ctx(tmp_path), flag, skip="nothing to do")
    assert stage.needs_actor()
    import pyarrow as pa
    import ray

    from curate.records import CORE_SCHEMA

    rows = [make_row("a", answer="kept as is")]
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=CORE_SCHEMA))
    out, info = apply_stage(stage, ds, Job(None, tmp_path, stage.resolved_resources()), stage.skip_reason())
    assert out.take_all()[0]["conversations"][1]["value"] == "kept as is" and info == {}
    assert not flag.exists()
    ran = apply_on_ray(Touching(None, make_ctx(tmp_path), flag), rows)
    assert ran[0]["conversations"][1]["value"] == "changed" and flag.read_text() == "set up"


def test_stages_with_setup_run_on_actors_and_others_as_tasks():
    class Plain(Stage):
        pass

    class Global(GlobalStage):
        def setup(self) -> None:  # a global stage builds its own plan, never a pool of itself
            pass

    assert Touching.needs_actor() and not Plain.needs_actor() and not Global.needs_actor()
    assert not Counting.needs_actor()


class Counting(Stage):
    """A stage with a cheap setup(): it runs as tasks, and every setup appends its process id."""

    name: ClassVar[str] = "counting"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=2)
    setup_in_tasks: ClassVar[bool] = True

    def __init__(self, config: Any, ctx: Any, log: Path) -> None:
        super().__init__(config, ctx)
        self.log = log

    def setup(self) -> None:
        import os

        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._ready, "process_rows before setup"
        for r in rows:
            r["conversations"][1]["value"] = f"seen by {self.log.name}"
        return rows


def test_a_cheap_setup_runs_once_per_worker_process_not_once_per_batch(ray_session, tmp_path):
    import pyarrow as pa
    import ray

    from curate.records import CORE_SCHEMA
    from curate.runner import apply_stage
    from curate.stages.base import Job

    log = tmp_path / "setups"
    stage = Counting(None, make_ctx(tmp_path), log)
    rows = [make_row(f"r{i}", answer="x") for i in range(40)]
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=CORE_SCHEMA)).repartition(20)
    for _ in range(2):  # a second run of the stage sets it up again, in the processes it reaches
        out, _ = apply_stage(stage, ds, Job(None, tmp_path, stage.resolved_resources()))
        got = out.take_all()
        assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows)
        assert {r["conversations"][1]["value"] for r in got} == {"seen by setups"}
    pids = log.read_text().split()
    # 20 blocks x 2 runs; each worker process set the stage up at most once per run
    assert max(Counter(pids).values()) <= 2, pids
    assert len(pids) < 20, f"setup ran {len(pids)} times for 40 batches"


def test_resources_come_from_the_class_the_config_and_the_recipe_block(ray_session):
    recipe = load_recipe(RECIPE, ["stages.transcribe.device=cuda", "stages.transcribe.resources.actors=3",
                                  "stages.tokenize.resources.batch_size=7", "stages.filter.clip_resources.cpus=2",
                                  "ray.concurrency=5"])
    ctx = make_ctx("/tmp/x", sources=recipe.source_map(), default_actors=recipe.ray.concurrency)
    stages = {s.name: s for s in build_stages(recipe, ctx)}
    tr = stages["transcribe"].resolved_resources()
    assert (tr.gpus, tr.actors, tr.batch_size) == (1, 3, 8)  # device=cuda asks for a GPU; the block sets actors
    tok = stages["tokenize"].resolved_resources()
    assert (tok.batch_size, tok.actors) == (7, 5)  # ray.concurrency is the default pool size
    assert stages["filter_clip"].resolved_resources().cpus == 2  # its own block, beside the rules' one
    opts = map_options(tr, actor=True)
    assert opts["num_gpus"] == 1 and opts["batch_size"] == 8 and opts["compute"].min_size == 3
    task = map_options(Resources(actors=4), actor=False)
    assert type(task["compute"]).__name__ == "TaskPoolStrategy" and task["compute"].size == 4
    assert "compute" not in map_options(Resources(), actor=False)
    with pytest.raises(Exception, match="actors"):
        load_recipe(RECIPE, ["stages.media.resources.actors=0"])


def test_the_pack_steps_cannot_be_turned_off():
    recipe = load_recipe(RECIPE, ["stages.pack.enabled=false"])
    with pytest.raises(ValueError, match="cannot be turned off"):
        build_stages(recipe, make_ctx("/tmp/x", sources=recipe.source_map()))


def hashes(*sets: str) -> dict[str, str]:
    recipe = load_recipe(RECIPE, list(sets))
    ctx = make_ctx("/tmp/x", seed=recipe.seed, sources=recipe.source_map(),
                   modality_targets=dict(recipe.modality_targets))
    out, upstream = {}, ""
    for stage in build_stages(recipe, ctx):
        upstream = stage_hash(stage, upstream)
        out[stage.name] = upstream
    return out


def changed(*sets: str) -> list[str]:
    """The stages a resumed run re-runs after `sets`: the first changed hash and all after it."""
    base, new = hashes(), hashes(*sets)
    return [name for name in base if base[name] != new[name]]


def test_resume_hash_covers_only_what_a_stage_reads():
    order = [s.name for s in STAGES]
    assert changed() == []
    assert changed("sources.demo-video.repeat=1.0") == ["pack_plan", "shard"]
    assert changed("modality_targets.text=0.3") == ["pack_plan", "shard"]
    assert changed("stages.pack.max_tokens=8192") == ["pack_select", "pack_plan", "shard"]
    assert changed("stages.shard.max_sequences=8") == ["shard"]
    assert changed("stages.audio_qa.max_wer=0.2") == order[order.index("audio_qa"):]
    assert changed("seed=7") == order[order.index("audio_qa"):]  # audio-QA's draw and voices, the mixture
    assert changed("stages.filter.max_char_run=90") == order[order.index("filter"):]
    assert changed("stages.tokenize.resources.batch_size=7") == []  # resources never change output
    assert changed("sources.demo-text.n_max=6")[0] == "media"


def test_unreadable_marker_means_not_done(tmp_path):
    layout = RunLayout(tmp_path)
    stage_dir = layout.stage_dir(3, "transcribe")
    stage_dir.mkdir(parents=True)
    write_json_atomic(layout.marker(stage_dir), {"stage": "transcribe", "hash": "abc"})
    assert read_marker(stage_dir)["hash"] == "abc"
    text = layout.marker(stage_dir).read_text()
    layout.marker(stage_dir).write_text(text[: len(text) // 2])  # a crash while writing it
    assert read_marker(stage_dir) is None
    assert not list(stage_dir.glob(".*.tmp"))  # the atomic writer left no temp file behind
    assert json.loads(text)["stage"] == "transcribe"


def test_a_skipped_stage_links_its_clean_input_files_and_rewrites_those_with_rejects(ray_session, tmp_path):
    """A skipped stage's output is its input's alive rows. A file with no reject is that already,
    so it is hard-linked, not rewritten; a file with rejects goes through Ray and loses them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.records import CORE_SCHEMA
    from curate.runner import Runner, unchanged_files
    from curate.stages.base import Job

    runner = Runner(load_recipe(RECIPE), tmp_path / "run")
    prev, here = runner.layout.stage_dir(1, "before"), runner.layout.stage_dir(2, "touching")
    prev.mkdir(parents=True)
    clean = [make_row(f"c{i}") for i in range(3)]
    mixed = [make_row("m0"), make_row("m1") | {"reject_reason": "bad"}]
    pq.write_table(pa.Table.from_pylist(clean, schema=CORE_SCHEMA), prev / "clean.parquet")
    pq.write_table(pa.Table.from_pylist(mixed, schema=CORE_SCHEMA), prev / "mixed.parquet")
    pq.write_table(CORE_SCHEMA.empty_table(), prev / "part-empty.parquet")

    unchanged, others = unchanged_files(prev, CORE_SCHEMA)
    assert [p.name for p in unchanged] == ["clean.parquet"] and [p.name for p in others] == ["mixed.parquet"]
    assert unchanged_files(prev, CORE_SCHEMA.remove(CORE_SCHEMA.get_field_index("media")))[0] == []

    stage = Touching(None, runner.ctx, tmp_path / "flag", skip="nothing to do")
    runner.run_stage(stage, Job(prev, here, stage.resolved_resources()), CORE_SCHEMA, "h", {}, stage.skip_reason())
    assert (here / "clean.parquet").stat().st_ino == (prev / "clean.parquet").stat().st_ino
    ids = sorted(pq.read_table(here, columns=["id"]).column("id").to_pylist())
    assert ids == ["c0", "c1", "c2", "m0"]
    marker = read_marker(here)
    assert marker["rows"] == marker["kept"] == 4 and marker["skipped"] == "nothing to do"
    assert marker["linked_files"] == 1
    assert not (tmp_path / "flag").exists()
