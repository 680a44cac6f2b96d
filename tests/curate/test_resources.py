"""Resources are decided once, by the runner, and reach what the models are built with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.recipe import load_recipe
from curate.runner import build_stages, grant, written_schemas
from curate.stages.base import Resources, Stage
from tests.builders import make_ctx

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml"


def granted_stages(tmp_path: Path, sets: list[str], cluster: dict[str, float]) -> dict[str, Stage]:
    """The recipe's stages with their resources bound as Runner.run binds them."""
    recipe = load_recipe(RECIPE, sets)
    ctx = make_ctx(tmp_path, seed=recipe.seed, sources=recipe.source_map(),
                   default_actors=recipe.ray.concurrency)
    stages = {s.name: s for s in build_stages(recipe, ctx)}
    for stage in stages.values():
        stage.bind_resources(grant(stage, cluster))
    return stages


class FakeWhisper:
    """Stands in for faster_whisper.WhisperModel: keeps the arguments it was built with."""

    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, path: str, **kwargs: Any) -> None:
        FakeWhisper.built.append({"path": path, **kwargs})


def test_a_recipes_cpus_reach_whisper_but_piper_keeps_one_thread(tmp_path, monkeypatch):
    import faster_whisper

    monkeypatch.setattr(faster_whisper, "WhisperModel", FakeWhisper)
    FakeWhisper.built = []
    stages = granted_stages(tmp_path, ["stages.transcribe.enabled=true", "stages.transcribe.resources.cpus=3",
                                       "stages.audio_qa.enabled=true", "stages.audio_qa.resources.cpus=3",
                                       "stages.audio_qa.tts=piper"], {"CPU": 8})
    transcribe, audio_qa = stages["transcribe"], stages["audio_qa"]
    assert type(transcribe).resources.cpus == 1  # the class default the models used to get
    transcribe.setup()
    assert len(transcribe.models) == 1 and transcribe.multilingual is not None
    audio_qa.setup()
    assert audio_qa.model is not None
    assert [b["cpu_threads"] for b in FakeWhisper.built] == [3, 3, 3]  # tiny.en, base, audio-QA's read-back
    piper = audio_qa.tts["piper"]
    assert piper.threads == 3
    options = piper.voice("joe").sess.get_session_options()  # the bundled voice, really loaded
    # onnxruntime's sums depend on its thread count: Piper stays on one so the cpus keep the bytes
    assert options.intra_op_num_threads == options.inter_op_num_threads == 1


def test_without_a_block_the_class_default_is_used(tmp_path, monkeypatch):
    import faster_whisper

    monkeypatch.setattr(faster_whisper, "WhisperModel", FakeWhisper)
    FakeWhisper.built = []
    stage = granted_stages(tmp_path, ["stages.transcribe.enabled=true"], {"CPU": 8})["transcribe"]
    stage.setup()
    assert stage.models and FakeWhisper.built[-1]["cpu_threads"] == 1


def test_gpu_if_available_becomes_a_gpu_only_on_a_cluster_with_one(tmp_path):
    sets = ["stages.filter.clip_resources.cpus=2"]
    on_gpu = granted_stages(tmp_path, sets, {"CPU": 8, "GPU": 1})["filter_clip"].resolved_resources()
    on_cpu = granted_stages(tmp_path, sets, {"CPU": 8})["filter_clip"].resolved_resources()
    assert (on_gpu.gpus, on_gpu.cpus, on_gpu.gpu_if_available) == (1, 0, False)
    assert (on_cpu.gpus, on_cpu.cpus, on_cpu.gpu_if_available) == (0, 2, False)
    cuda = granted_stages(tmp_path, ["stages.transcribe.enabled=true", "stages.transcribe.device=cuda"],
                          {"CPU": 8})["transcribe"]
    assert cuda.resolved_resources().gpus == 1  # asked by the config, whatever the cluster


def test_model_stages_name_their_model_for_the_progress_view(tmp_path):
    stages = granted_stages(tmp_path, ["stages.transcribe.enabled=true", "stages.audio_qa.enabled=true",
                                       "stages.filter.lid_model=models/lid/my-lid.ftz"], {"CPU": 2})
    labels = {name: s.model_label() for name, s in stages.items()}
    assert labels["filter"] == "my-lid.ftz" and labels["transcribe"] == "whisper-tiny.en"
    assert labels["audio_qa"] == "whisper-base" and labels["score"] == "default"
    assert labels["tokenize"] == Path(stages["tokenize"].config.tokenizer).name
    assert labels["ingest"] is None and labels["dedupe"] is None and labels["shard"] is None


def test_a_skipped_stage_finds_its_null_columns_already_in_its_input_files(tmp_path):
    """The filter writes the CLIP stage's clip_score when that stage is skipped, so the
    skipped stage hard-links the filter's files; with a CLIP model the filter writes its own."""
    recipe = load_recipe(RECIPE)
    stages = build_stages(recipe, make_ctx(tmp_path, sources=recipe.source_map()))
    names = [s.name for s in stages]
    f, clip = names.index("filter"), names.index("filter_clip")
    skipped = written_schemas(stages, [s.skip_reason() for s in stages])
    assert stages[clip].skip_reason() and "clip_score" not in stages[f].output_schema(skipped[f - 1]).names
    assert skipped[f].equals(skipped[clip]) and "clip_score" in skipped[f].names
    running = written_schemas(stages, [None] * len(stages))
    assert "clip_score" not in running[f].names and "clip_score" in running[clip].names


def test_the_shard_stage_counts_sequences_from_its_rows(tmp_path):
    from curate.stages.shard import ROW_BYTES, _measure

    rows = pa.table({"n_tokens": [10, 20, 30, 40], "sequence": [0, 2, 1, None],
                     "reject_reason": [None, None, None, "not_drawn"]})
    pq.write_table(rows, tmp_path / "a.parquet")
    pq.write_table(rows.slice(0, 0), tmp_path / "empty.parquet")
    assert _measure([tmp_path / "a.parquet", tmp_path / "empty.parquet"]) == (3, 8 * 60 + 3 * ROW_BYTES)
    assert _measure([tmp_path / "empty.parquet"]) == (0, 0) and _measure([]) == (0, 0)


def test_resources_bound_by_the_runner_win_over_the_recipe(tmp_path):
    stage = granted_stages(tmp_path, ["stages.tokenize.resources.cpus=2"], {"CPU": 4})["tokenize"]
    assert stage.resolved_resources().cpus == 2
    stage.bind_resources(Resources(cpus=5))
    assert stage.resolved_resources().cpus == 5 and stage.requested_resources().cpus == 2


def test_an_actor_pool_that_would_hold_every_cpu_fails_before_work(tmp_path):
    """audio_qa with cpus equal to the cluster's CPUs hung: its actor held them all and the tasks
    feeding it waited forever. It is now a clear error naming the stage; one CPU fewer passes,
    and so do two actors of one CPU each (the determinism test runs that)."""
    from curate.errors import UserError
    from curate.runner.executor import check_actor_fits

    sets = ["stages.audio_qa.fraction=0.5"]
    for cpus, actors, fits in ((2, None, False), (3, 2, False), (1, 2, True), (1, None, True)):
        extra = [f"stages.audio_qa.resources.cpus={cpus}"] + ([f"stages.audio_qa.resources.actors={actors}"]
                                                              if actors else [])
        stage = granted_stages(tmp_path, sets + extra, {"CPU": 2})["audio_qa"]
        assert stage.needs_actor()
        if fits:
            check_actor_fits(stage, stage.resolved_resources(), {"CPU": 2})
        else:
            with pytest.raises(UserError, match="stage audio_qa: resources.cpus="):
                check_actor_fits(stage, stage.resolved_resources(), {"CPU": 2})
    tasks = granted_stages(tmp_path, ["stages.tokenize.resources.cpus=2"], {"CPU": 2})["tokenize"]
    check_actor_fits(tasks, tasks.resolved_resources(), {"CPU": 2})  # tasks free their CPUs between blocks
