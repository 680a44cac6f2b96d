"""Filter: InternVL 2.5's heuristic rules, the repetition detector and fastText language id.

Every alive row gets `repetition_score`, `language`, `language_score` and `filter_flags` (the
names of every check it failed, "" when none); the first failure rejects it with the check's
name as reason and its score or rule detail as `reject_detail`. The CLIP image-text check
that follows is its own stage (curate.stages.filter_clip) reading the same recipe section.

With `nsfw`, NudeNet's detector (filters.nsfw) scores every stored image and every sampled
video frame of the batch in one pass: `nsfw_score` is the sample's highest score of an unsafe
class, `nsfw_labels` every detection per image ("media 1: FACE_FEMALE=0.72 | media 2 frame 3:
..."). At `nsfw_threshold` the sample is rejected `unsafe_image` (this check comes first: the
reason a reviewer must see), from `nsfw_review_threshold` it is flagged `nsfw_borderline` and
kept. It runs here rather than in a model stage of its own: the 12 MB model loads in a fraction
of a second per worker, as fastText does, and needs no GPU.

Sources with `exempt_repetition` are scored but never rejected for repetition (InternVL 2.5
exempts curated academic sets); such samples are flagged `repetitive_exempt`. With
`write_review`, every rejected or flagged sample is written with its scores and signals to
`<out>/review/filter/`, because the papers review flagged samples before removal.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from curate.records import is_rejected, reject
from curate.review import write_review
from curate.stages.base import Resources, Stage, model_name


class FilterStage(Stage):
    name: ClassVar[str] = "filter"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256)  # fewer per-batch round trips
    # stages.filter, but for the CLIP keys (filter_clip's)
    config_keys: ClassVar[tuple[str, ...]] = (
        "repetition", "repetition_threshold", "heuristics", "min_answer_chars", "max_sentence_words",
        "max_sentence_chars_cjk", "max_zero_run", "max_char_run", "max_duplicate_line_ratio", "language",
        "languages", "language_min_score", "lid_model", "write_review", "options", "nsfw", "nsfw_threshold",
        "nsfw_review_threshold")
    source_keys: ClassVar[tuple[str, ...]] = ("exempt_repetition", "languages")
    setup_in_tasks: ClassVar[bool] = True  # a 1 MB fastText model: cheap to load in every worker

    def inputs(self) -> list[str]:
        return ["conversations", "media", "source", "modality"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"repetition_score": pa.float64(), "language": pa.string(), "language_score": pa.float64(),
                "filter_flags": pa.string(),
                **({"nsfw_score": pa.float64(), "nsfw_labels": pa.string()} if self.config.nsfw else {})}

    def model_label(self) -> str:
        return model_name(self.config.lid_model, "lid.176.ftz")

    # ------------------------------------------------------------------ before work starts
    def validate(self) -> None:
        from filters.heuristics import HeuristicThresholds
        from filters.repetition import Thresholds

        Thresholds.from_options(self.config.options)
        HeuristicThresholds.from_config(self.config)
        if self.needs_language():
            from filters.language import lid_path

            lid_path(self.config.lid_model)
        if self.config.nsfw:
            from filters.nsfw import model_path

            model_path()

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
        self.nsfw = None
        if self.config.nsfw:
            from filters.nsfw import shared_detector

            self.nsfw = shared_detector()

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from filters.repetition import repetition_signals_batch

        alive = [row for row in rows if not is_rejected(row)]
        # the repetition signals of every answer of the batch in one call: per text, most of
        # the cost is fixed numpy overhead that the batch path pays once
        answers = [[t["value"] for t in row.get("conversations") or [] if t.get("from") == "gpt" and t.get("value")]
                   for row in alive]
        signals = iter(repetition_signals_batch([a for texts in answers for a in texts], self.rep_thresholds))
        # fastText for all rows in a row as well: between the numpy work of other filters its
        # model drops out of the CPU caches and one prediction took about twice as long
        languages = ([self.language(row.get("conversations") or []) for row in alive] if self.lid
                     else [None] * len(alive))
        unsafe = self.nsfw_batch(alive) if self.nsfw is not None else [None] * len(alive)
        review = []
        for row, texts, language, nsfw in zip(alive, answers, languages, unsafe):
            flagged = self.filter_row(row, [next(signals) for _ in texts], language, nsfw)
            if flagged is not None:
                review.append(flagged)
        if self.config.write_review:
            write_review(self.ctx.layout, self.name, review)
        return rows

    def filter_row(self, row: dict[str, Any], rep_signals: list[dict[str, float]] | None = None,
                   language: tuple[str, float] | None = None,
                   nsfw: tuple[float, str, str] | None = None) -> dict[str, Any] | None:
        """Score one row in place; reject it on the first failed check. Returns its review entry.
        rep_signals (repetition_signals of the row's non-empty answers, in turn order) and
        language (self.language of its turns) are given when process_rows computed them for
        the whole batch; nsfw (score, labels, unsafe labels: nsfw_batch's) when the row has images."""
        from filters import heuristics
        from filters.language import language_allowed

        turns = row.get("conversations") or []
        failures: list[tuple[str, str]] = []  # (reason, detail), in order of precedence
        flags: list[str] = []
        if nsfw is not None:
            row["nsfw_score"], row["nsfw_labels"], unsafe = nsfw
            if row["nsfw_score"] >= self.config.nsfw_threshold:
                failures.append(("unsafe_image", f"{unsafe} nsfw_threshold={self.config.nsfw_threshold}"))
            elif row["nsfw_score"] >= self.config.nsfw_review_threshold:
                flags.append("nsfw_borderline")
        if self.config.heuristics:
            for rule, detail in heuristics.check(turns, row.get("media"), self.rule_thresholds):
                failures.append((rule, f"heuristics: {detail}"))
        score, signals, turn = self.repetition(turns, rep_signals)
        row["repetition_score"] = score
        if self.config.repetition and score >= self.config.repetition_threshold:
            detail = (f"repetition_score={score:.3f} signals={','.join(signals)} turn={turn} "
                      f"threshold={self.config.repetition_threshold}")
            if getattr(self.ctx.source(row["source"]), "exempt_repetition", False):
                flags.append("repetitive_exempt")
            else:
                failures.append(("repetitive", detail))
        if self.lid is not None:
            lang, prob = language or self.language(turns)
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

    def nsfw_batch(self, rows: list[dict[str, Any]]) -> list[tuple[float, str, str] | None]:
        """Per row: (highest unsafe score, every detection per image, the unsafe ones at or above
        nsfw_review_threshold), None for a row without images or frames. The images of the whole
        batch go through the detector together, each stored file once."""
        from filters.nsfw import UNSAFE_LABELS

        def images(row: dict[str, Any]) -> list[tuple[str, str]]:  # (name, stored path)
            out = []
            for i, item in enumerate(row.get("media") or [], 1):
                if item.get("kind") == "image" and item.get("path"):
                    out.append((f"media {i}", item["path"]))
                for k, frame in enumerate(item.get("frames") or [], 1):
                    out.append((f"media {i} frame {k}", frame))
            return out

        per_row = [images(row) for row in rows]
        paths = list(dict.fromkeys(p for named in per_row for _, p in named))
        found = dict(zip(paths, self.nsfw.detect_files(paths))) if paths else {}
        results: list[tuple[float, str, str] | None] = []
        for named in per_row:
            if not named:
                results.append(None)
                continue
            score, labels, unsafe = 0.0, [], []
            for name, path in named:
                dets = found[path]
                if dets:
                    labels.append(f"{name}: " + " ".join(f"{d.label}={d.score:.2f}" for d in dets))
                bad = [d for d in dets if d.label in UNSAFE_LABELS]
                score = max([score] + [d.score for d in bad])
                review = self.config.nsfw_review_threshold
                hits = [f"{d.label}={d.score:.2f}" for d in bad if d.score >= review]
                if hits:
                    unsafe.append(f"{name}: {' '.join(hits)}")
            results.append((score, " | ".join(labels), " | ".join(unsafe)))
        return results

    def language(self, turns: list[dict[str, Any]]) -> tuple[str, float]:
        """(language, probability) of the answers, all of them as one text."""
        return self.lid.predict("\n".join(t["value"] or "" for t in turns if t["from"] == "gpt"))

    def repetition(self, turns: list[dict[str, Any]], rep_signals: list[dict[str, float]] | None = None
                   ) -> tuple[float, list[str], int]:
        """The most repetitive answer: (score, the signals that fired, its 1-based turn)."""
        from filters.repetition import fired, repetition_signals

        answers = [(i, t["value"]) for i, t in enumerate(turns) if t.get("from") == "gpt" and t.get("value")]
        if rep_signals is None:  # one row alone: the per-text path has less fixed cost
            rep_signals = [repetition_signals(a, self.rep_thresholds) for _, a in answers]
        best: tuple[float, list[str], int] = (0.0, [], 0)
        for (i, _), sig in zip(answers, rep_signals, strict=True):
            if sig["score"] > best[0]:
                names = fired(sig)
                best = (sig["score"], [f"{n}={sig[n]:.3g}" for n in names], i + 1)
        return best


# ---------------------------------------------------------------------- review files
def review_entry(row: dict[str, Any], failures: list[tuple[str, str]], flags: list[str]) -> dict[str, Any]:
    turns = row.get("conversations") or []
    return {
        "id": row["id"], "orig_id": row.get("orig_id"), "source": row["source"], "modality": row.get("modality"),
        "decision": "rejected" if failures else "kept", "reason": row.get("reject_reason"),
        "detail": row.get("reject_detail"), "flags": flags, "checks": [list(f) for f in failures],
        "repetition_score": row.get("repetition_score"), "language": row.get("language"),
        "language_score": row.get("language_score"), "clip_score": row.get("clip_score"),
        **({"nsfw_score": row["nsfw_score"], "nsfw_labels": row.get("nsfw_labels")}
           if "nsfw_score" in row else {}),
        "conversations": [{"from": t["from"], "value": (t["value"] or "")[:4000]} for t in turns],
    }
