"""Score, loss part: Baichuan-omni's loss-based cleaning over the whole dataset.

The score stage stores each sample's mean token loss under a reference model in
`sample_loss`. This stage needs every loss of a source at once (curate.scoring.loss: a
groupby per source, then a map that rejects samples outside mean +/- k std as
`loss_outlier`, reject stage `score`), so it is a global stage. It runs only with
`stages.score.loss_clean` and a scoring model.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from curate.scoring import loss as loss_pass
from curate.stages.base import GlobalStage, Job, model_name
from curate.stages.score import ScoreStage, no_model_reason

log = logging.getLogger("curate.score")


class LossCleanStage(GlobalStage):
    name: ClassVar[str] = "score_loss"
    # of stages.score: its own keys, and those that say whether the score stage had a model
    config_keys: ClassVar[tuple[str, ...]] = ("loss_clean", "loss_k", "loss_min_samples", "loss_model",
                                              "backend", "endpoint", "model")

    def inputs(self) -> list[str]:
        return ["source", "sample_loss"]

    def skip_reason(self) -> str | None:
        if not self.config.loss_clean:
            return "stages.score.loss_clean is false"
        return no_model_reason(self.config)

    def model_label(self) -> str:
        return model_name(self.config.loss_model, "default")  # the model whose losses it reads

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        c = self.config
        stats = loss_pass.source_loss_stats(ds, job.executor)
        log.info("score: per-source loss statistics %s", stats)
        out = job.executor.map(ds, loss_pass.reject_outliers, job.resources, stats=stats, k=c.loss_k,
                               min_samples=c.loss_min_samples, stage=ScoreStage.name)
        return out, {"loss_stats": stats}
