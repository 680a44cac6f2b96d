"""The pipeline's stages in order: what the runner builds and the report lists.

A stage is named here by its module and class, imported only when it is enabled. The list
lives apart from the runner so that the report (and anything else that names the stages)
reads it without importing the runner (curate.runner.STAGES is this list).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str  # the stage's `name`: its work folder, rejects file and marker
    cls: str  # module:Class, imported only when the stage is enabled
    section: str  # its config section under `stages:` (sub-stages share their parent's)
    required: bool = False  # the packing steps always run: a run's output is its shards


STAGES = [
    StageSpec("ingest", "curate.stages.ingest:IngestStage", "ingest", required=True),
    StageSpec("download", "curate.stages.download:DownloadStage", "download"),
    StageSpec("media", "curate.stages.media:MediaStage", "media"),
    StageSpec("transcribe", "curate.stages.transcribe:TranscribeStage", "transcribe"),
    StageSpec("filter", "curate.stages.filter:FilterStage", "filter"),
    StageSpec("filter_clip", "curate.stages.filter_clip:ClipFilterStage", "filter"),
    StageSpec("dedupe", "curate.stages.dedupe:DedupeStage", "dedupe"),
    StageSpec("decontaminate", "curate.stages.decontaminate:DecontaminateStage", "decontaminate"),
    StageSpec("score", "curate.stages.score:ScoreStage", "score"),
    StageSpec("score_loss", "curate.stages.score_loss:LossCleanStage", "score"),
    StageSpec("audio_qa", "curate.stages.audio_qa:AudioQAStage", "audio_qa"),
    StageSpec("tokenize", "curate.stages.tokenize:TokenizeStage", "tokenize", required=True),
    StageSpec("pack_select", "curate.stages.pack_select:PackSelectStage", "pack", required=True),
    StageSpec("pack_plan", "curate.stages.pack_plan:PackPlanStage", "pack", required=True),
    StageSpec("shard", "curate.stages.shard:ShardStage", "shard", required=True),
]
