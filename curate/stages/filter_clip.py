"""Filter, CLIP part: image-text agreement of single-image samples (open_clip, on an actor pool).

Only when `stages.filter.clip_model` names a local open_clip folder: the model loads once per
actor (on a GPU when the cluster has one) and writes `clip_score` for single-image samples
with an answer; those below `clip_min_score` are rejected `low_clip_score` (reject stage
`filter`, as the rule checks). With no model the runner passes rows through and the log and
stats say why. Its resources are `stages.filter.clip_resources`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from curate.records import is_rejected, reject
from curate.review import write_review
from curate.stages.base import Resources, Stage, model_name
from curate.stages.filter import FilterStage, review_entry

CLIP_SKIPPED = "CLIP image-text filter skipped: stages.filter.clip_model is null (text filters ran; clip_score is null)"


class ClipFilterStage(Stage):
    name: ClassVar[str] = "filter_clip"
    resources: ClassVar[Resources] = Resources(cpus=1, actors=1, batch_size=32, gpu_if_available=True)
    resources_key: ClassVar[str] = "clip_resources"
    config_keys: ClassVar[tuple[str, ...]] = ("clip_model", "clip_min_score", "write_review")  # stages.filter

    def inputs(self) -> list[str]:
        return ["media", "conversations", "filter_flags"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"clip_score": pa.float64()}

    def validate(self) -> None:
        if self.config.clip_model:
            from filters.clipscore import check_clip_folder

            check_clip_folder(self.config.clip_model)

    def skip_reason(self) -> str | None:
        return None if self.config.clip_model else CLIP_SKIPPED

    def model_label(self) -> str:
        return model_name(self.config.clip_model, "default")

    def setup(self) -> None:
        from filters.clipscore import ClipScorer

        self.scorer = ClipScorer(self.config.clip_model, None)

    def rows_to_process(self, batch: pa.Table) -> pa.Array:
        """Alive rows with exactly one media item (caption_of picks the captions among them)."""
        return pc.and_(pc.equal(pc.list_value_length(batch.column("media")), 1),
                       pc.is_null(batch.column("reject_reason")))

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        todo = [(row, caption) for row in rows if not is_rejected(row) and (caption := caption_of(row))]
        if not todo:
            return rows
        from PIL import Image

        images = []
        for row, _ in todo:
            with Image.open(row["media"][0]["path"]) as im:
                images.append(im.convert("RGB"))
        scores = self.scorer.score(images, [c for _, c in todo])
        review = []
        for (row, _), score in zip(todo, scores):
            row["clip_score"] = score
            if score < self.config.clip_min_score:
                detail = f"clip_score={score:.4f} clip_min_score={self.config.clip_min_score}"
                reject(row, FilterStage.name, "low_clip_score", detail)
                row["filter_flags"] = ",".join(filter(None, [row.get("filter_flags"), "low_clip_score"]))
                review.append(review_entry(row, [("low_clip_score", detail)], row["filter_flags"].split(",")))
        if self.config.write_review:
            write_review(self.ctx.layout, self.name, review)
        return rows


def caption_of(row: dict[str, Any]) -> str | None:
    """The answer of a caption-like sample: one stored image and a non-empty first answer."""
    media = row.get("media") or []
    if len(media) != 1 or media[0].get("kind") != "image" or not media[0].get("path"):
        return None
    answer = next((t["value"] for t in row.get("conversations") or [] if t["from"] == "gpt"), None)
    return answer.strip() if answer and answer.strip() else None
