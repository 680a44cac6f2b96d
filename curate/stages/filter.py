"""Filter: heuristic rules, repetition and language id per batch; CLIP on an actor pool.

The stage is composite (STYLE.md: composite stages expand into smaller ones):
1. text filters - a stateless Ray Data map over batches (`FilterStage.__call__`): InternVL's
   heuristic rules, the repetition detector and fastText language id. Every alive row gets
   `repetition_score`, `language`, `language_score` and `filter_flags` (the names of every
   check it failed, "" when none); the first failure rejects it with the check's name as
   reason and its score or rule detail as `reject_detail`.
2. CLIP - only when `clip_model` names a local open_clip folder: an actor pool (the model
   loads once per actor, on a GPU when the cluster has one) writes `clip_score` for
   single-image samples and rejects those below `clip_min_score`. With no model the CLIP
   part is skipped, `clip_score` stays null and skip_reason() says so in the log and stats.

Sources with `exempt_repetition` are scored but never rejected for repetition (InternVL 2.5
exempts curated academic sets); such samples are flagged `repetitive_exempt`. With
`write_review`, every rejected or flagged sample is written with its scores and signals to
`<out>/review/filter-<hash>.jsonl`, because the papers review flagged samples before removal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curate.records import is_rejected, reject
from curate.stages.base import GlobalStage, Resources

log = logging.getLogger("curate")

CLIP_SKIPPED = "CLIP image-text filter skipped: stages.filter.clip_model is null (text filters ran; clip_score is null)"


class FilterStage(GlobalStage):
    name: ClassVar[str] = "filter"
    resources: ClassVar[Resources] = Resources(cpus=1)
    batch_size: ClassVar[int] = 64

    def inputs(self) -> list[str]:
        return ["conversations", "media", "source", "modality"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"repetition_score": pa.float64(), "language": pa.string(), "language_score": pa.float64(),
                "clip_score": pa.float64(), "filter_flags": pa.string()}

    # ------------------------------------------------------------------ before work starts
    def validate(self) -> None:
        from filters.heuristics import HeuristicThresholds
        from filters.repetition import Thresholds

        Thresholds.from_options(self.config.options)
        HeuristicThresholds.from_config(self.config)
        if self.needs_language():
            from filters.language import lid_path

            lid_path(self.config.lid_model)
        if self.config.clip_model:
            from filters.clipscore import check_clip_folder

            check_clip_folder(self.config.clip_model)

    def skip_reason(self) -> str | None:
        return None if self.config.clip_model else CLIP_SKIPPED

    def needs_language(self) -> bool:
        return self.config.language or any(getattr(s, "languages", None) for s in self.ctx.sources.values())

    def allowed_languages(self, source: str) -> list[str] | None:
        own = getattr(self.ctx.source(source), "languages", None)
        if own:
            return list(own)
        return list(self.config.languages) if self.config.language else None

    # ------------------------------------------------------------------ the text filters
    def setup(self) -> None:
        from filters.heuristics import HeuristicThresholds
        from filters.repetition import Thresholds

        self.rep_thresholds = Thresholds.from_options(self.config.options)
        self.rule_thresholds = HeuristicThresholds.from_config(self.config)
        self.lid = None
        if self.needs_language():
            from filters.language import LanguageId, lid_path

            self.lid = LanguageId(lid_path(self.config.lid_model))

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        review = []
        for row in rows:
            if is_rejected(row):
                continue
            flagged = self.filter_row(row)
            if flagged is not None:
                review.append(flagged)
        if review and self.config.write_review:
            write_review(self.ctx.review_dir, review)
        return rows

    def filter_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Score one row in place; reject it on the first failed check. Returns its review entry."""
        from filters import heuristics
        from filters.language import language_allowed

        turns = row.get("conversations") or []
        failures: list[tuple[str, str]] = []  # (reason, detail), in order of precedence
        flags: list[str] = []
        if self.config.heuristics:
            for rule, detail in heuristics.check(turns, row.get("media"), self.rule_thresholds):
                failures.append((rule, f"heuristics: {detail}"))
        score, signals, turn = self.repetition(turns)
        row["repetition_score"] = score
        if self.config.repetition and score >= self.config.repetition_threshold:
            detail = (f"repetition_score={score:.3f} signals={','.join(signals)} turn={turn} "
                      f"threshold={self.config.repetition_threshold}")
            if getattr(self.ctx.source(row["source"]), "exempt_repetition", False):
                flags.append("repetitive_exempt")
            else:
                failures.append(("repetitive", detail))
        if self.lid is not None:
            answer = "\n".join(t["value"] or "" for t in turns if t["from"] == "gpt")
            lang, prob = self.lid.predict(answer)
            row["language"], row["language_score"] = lang, prob
            allowed = self.allowed_languages(row["source"])
            if not language_allowed(lang, prob, allowed, self.config.language_min_score):
                failures.append(("wrong_language", f"language={lang} score={prob:.3f} allowed={','.join(allowed)}"))
        flags = [reason for reason, _ in failures] + flags
        row["filter_flags"] = ",".join(flags)
        if failures:
            reject(row, self.name, *failures[0])
        if not flags:
            return None
        return review_entry(row, failures, flags)

    def repetition(self, turns: list[dict[str, Any]]) -> tuple[float, list[str], int]:
        """The most repetitive answer: (score, the signals that fired, its 1-based turn)."""
        from filters.repetition import fired, repetition_signals

        best: tuple[float, list[str], int] = (0.0, [], 0)
        for i, t in enumerate(turns):
            if t.get("from") == "gpt" and t.get("value"):
                sig = repetition_signals(t["value"], self.rep_thresholds)
                if sig["score"] > best[0]:
                    names = fired(sig)
                    best = (sig["score"], [f"{n}={sig[n]:.3g}" for n in names], i + 1)
        return best

    # ------------------------------------------------------------------ the Ray plan
    def transform(self, ds: Any) -> Any:
        """Text filters as tasks, then (if configured) CLIP on an actor pool."""
        clear_review(self.ctx.review_dir)
        ds = ds.map_batches(self, batch_format="pyarrow", batch_size=self.batch_size, num_cpus=self.resources.cpus)
        if not self.config.clip_model:
            log.warning("stage filter: %s", CLIP_SKIPPED)
            return ds
        import ray

        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        return ds.map_batches(ClipFilter, fn_constructor_args=(self.config, self.ctx), batch_format="pyarrow",
                              batch_size=32, concurrency=self.config.clip_actors, num_gpus=gpus,
                              num_cpus=0 if gpus else 1)


# ---------------------------------------------------------------------- CLIP actor
class ClipFilter:
    """Ray actor: loads the open_clip model once, scores single-image samples per batch."""

    def __init__(self, config: Any, ctx: Any, device: str | None = None) -> None:
        from filters.clipscore import ClipScorer

        self.config, self.ctx = config, ctx
        self.scorer = ClipScorer(config.clip_model, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [(row, caption) for row in rows if not is_rejected(row) and (caption := caption_of(row))]
        if todo:
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
            if review and self.config.write_review:
                write_review(self.ctx.review_dir, review, prefix="filter-clip")
        return pa.Table.from_pylist(rows, schema=batch.schema)


def caption_of(row: dict[str, Any]) -> str | None:
    """The answer of a caption-like sample: one stored image and a non-empty first answer."""
    media = row.get("media") or []
    if len(media) != 1 or media[0].get("kind") != "image" or not media[0].get("path"):
        return None
    answer = next((t["value"] for t in row.get("conversations") or [] if t["from"] == "gpt"), None)
    return answer.strip() if answer and answer.strip() else None


# ---------------------------------------------------------------------- review files
def review_entry(row: dict[str, Any], failures: list[tuple[str, str]], flags: list[str]) -> dict[str, Any]:
    turns = row.get("conversations") or []
    return {
        "id": row["id"], "source": row["source"], "modality": row.get("modality"),
        "decision": "rejected" if failures else "kept", "reason": row.get("reject_reason"),
        "detail": row.get("reject_detail"), "flags": flags, "checks": [list(f) for f in failures],
        "repetition_score": row.get("repetition_score"), "language": row.get("language"),
        "language_score": row.get("language_score"), "clip_score": row.get("clip_score"),
        "conversations": [{"from": t["from"], "value": (t["value"] or "")[:4000]} for t in turns],
    }


def write_review(review_dir: Path, entries: list[dict[str, Any]], prefix: str = "filter") -> Path:
    """One JSONL file per batch, named by the hash of its ids (same batch, same file)."""
    review_dir = Path(review_dir)
    review_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join(e["id"] for e in entries).encode()).hexdigest()[:16]
    path = review_dir / f"{prefix}-{key}.jsonl"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def clear_review(review_dir: Path) -> None:
    """A re-run of the stage rewrites its review files; old ones would double-count."""
    for old in Path(review_dir).glob("filter*-*.jsonl"):
        old.unlink(missing_ok=True)
