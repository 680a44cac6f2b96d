"""Score: LLM quality scoring and LLM repetition check (InternVL 2.5 sec. 4.3), plus
Baichuan-omni's loss-based cleaning.

Per sample (text cut to `max_chars`, head and tail kept):
1. domain: the model picks one of the prompt file's domains (or the source's `domain`
   when `classify_domain` is false);
2. quality: a domain-specific prompt asks for a 0-10 score (only for `modalities`,
   text by default: open models score multimodal data poorly); below the domain's
   threshold (7 by default) the sample is rejected as `low_quality`;
3. repetition: a yes/no prompt; "yes" rejects as `repetitive_llm` (or only flags it);
   sources with `exempt_repetition` skip this question.
An unparsable reply is asked again once, then the sample is `unscored` (kept or rejected
as the recipe says). Replies are cached by model + prompt version + prompt text, so a
re-run does not ask again. Flagged samples go to <out>/review/score/ for a human.

With no model or endpoint in the recipe the stage is skipped (skip_reason names the key)
and rows pass through with empty score columns: scores are never invented.
The model is loaded once per actor (setup). `loss_clean` needs the whole dataset's losses,
so it is the next stage (curate.stages.score_loss).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curate.records import reject, text_of
from curate.review import write_review
from curate.scoring.parse import parse_domain, parse_score, parse_yes_no
from curate.scoring.prompts import clip_text, load_prompts
from curate.stages.base import Resources, Stage, model_name

SCORE_CHOICES = tuple(str(i) for i in range(11))
YES_NO = ("yes", "no")
YES_NO_ZH = ("是", "否")
# score_status values
SCORED, UNSCORED, EXEMPT, REPETITION_ONLY = "scored", "unscored", "exempt", "repetition_only"


def no_model_reason(c: Any) -> str | None:
    """Why the score stages (this one and score_loss) have no model to ask with the score
    section `c`, or None when they have one."""
    if c.backend == "http" and not c.endpoint:
        return ("no scoring endpoint configured: set stages.score.endpoint (an OpenAI-compatible "
                "server) and stages.score.model (its model name); rows pass through unscored")
    if c.backend != "http" and not c.model:
        return ("no scoring model configured: set stages.score.model to a local model folder "
                "(or stages.score.backend=http with stages.score.endpoint); rows pass through unscored")
    return None


class ScoreStage(Stage):
    name: ClassVar[str] = "score"
    resources: ClassVar[Resources] = Resources(cpus=1.0, actors=1, batch_size=16)
    # stages.score, but for loss_k and loss_min_samples (score_loss's)
    config_keys: ClassVar[tuple[str, ...]] = (
        "backend", "model", "endpoint", "prompts", "prompts_zh", "threshold", "thresholds", "classify_domain",
        "modalities", "repetition_check", "repetition_reject", "exempt_sources", "unscored", "cache",
        "max_chars", "loss_clean", "loss_model", "options")
    source_keys: ClassVar[tuple[str, ...]] = ("exempt_repetition", "domain")

    def inputs(self) -> list[str]:
        return ["id", "source", "modality", "domain", "conversations"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"score_domain": pa.string(), "quality_score": pa.float64(), "repetition_llm": pa.bool_(),
                "score_status": pa.string(), "score_prompt": pa.string(), "score_model": pa.string(),
                "sample_loss": pa.float64()}

    # ------------------------------------------------------------------ before work
    def default_resources(self) -> Resources:
        return self.resources.with_(gpus=1.0 if self.config.backend == "vllm" else None)

    def skip_reason(self) -> str | None:
        return no_model_reason(self.config)

    def model_label(self) -> str:
        return model_name(self.config.model, "default")

    def validate(self) -> None:
        """Fail before any work: prompt file, model folders, vllm install, names in the recipe."""
        c = self.config
        prompts = load_prompts(c.prompts)
        zh = load_prompts(c.prompts_zh or c.prompts)
        if zh.domains != prompts.domains:
            raise ValueError(f"stages.score.prompts_zh: its domains {list(zh.domains)} differ from "
                             f"stages.score.prompts' {list(prompts.domains)} (thresholds and stats use one list)")
        unknown = sorted(set(c.thresholds) - set(prompts.domains))
        if unknown:
            raise ValueError(f"stages.score.thresholds: unknown domains {unknown}; the prompt file "
                             f"{c.prompts or 'score-v1'} knows {list(prompts.domains)}")
        missing = sorted(set(c.exempt_sources) - set(self.ctx.sources))
        if missing and self.ctx.sources:
            raise ValueError(f"stages.score.exempt_sources: no source named {missing}; "
                             f"sources are {sorted(self.ctx.sources)}")
        if self.skip_reason():
            return
        if c.backend == "http":
            if not c.endpoint.startswith(("http://", "https://")):
                raise ValueError(f"stages.score.endpoint must be an http(s) URL, got {c.endpoint!r}")
            if c.loss_clean and not c.loss_model:
                raise ValueError("stages.score.loss_clean needs per-token losses, which an OpenAI chat "
                                 "endpoint does not give: set stages.score.loss_model to a local folder")
        for key, path in (("model", c.model if c.backend != "http" else None),
                          ("loss_model", c.loss_model if c.loss_clean else None)):
            if path and not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"stages.score.{key}: {path} is not a model folder (no config.json "
                                        f"there); models are never downloaded, point it at a local copy")
        if c.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("stages.score.backend=vllm but vllm is not installed: pip install '.[gpu]' "
                             "(needs a CUDA GPU), or use backend transformers/http")

    # ------------------------------------------------------------------ per actor
    def setup(self) -> None:
        from curate.scoring.backends import make_scorer
        from curate.scoring.cache import NullCache, ReplyCache
        from curate.scoring.judge import Judge

        c = self.config
        self.prompt_sets = {lang: load_prompts(path) for lang, path in self.prompt_files().items()}
        self.loss_scorer = None
        self.scorer = make_scorer(c.backend, c.model, c.endpoint, c.options)
        if c.loss_clean:
            if c.loss_model and c.loss_model != c.model or c.backend == "http":
                self.loss_scorer = make_scorer("vllm" if c.backend == "vllm" else "transformers",
                                               c.loss_model, None, c.options)
            else:
                self.loss_scorer = self.scorer
        cache = ReplyCache(self.ctx.layout.score_cache) if c.cache else NullCache()
        self.batch_size = self.resolved_resources().batch_size
        self.judges = {lang: Judge(self.scorer, ps.prompt_id, cache, self.batch_size)
                       for lang, ps in self.prompt_sets.items()}

    def prompt_files(self) -> dict[str, str | None]:
        """Prompt file per language: `prompts` for every language, `prompts_zh` for Chinese samples."""
        return {"en": self.config.prompts, "zh": self.config.prompts_zh or self.config.prompts}

    def language_of(self, row: dict[str, Any], text: str) -> str:
        """"zh" for a Chinese sample (fastText LID when the filter ran it, else mostly-CJK text)."""
        from filters.text_units import is_cjk

        lang = (row.get("language") or "").split("_")[0]
        if lang:
            return "zh" if lang in ("zh", "wuu", "yue") else "en"
        return "zh" if is_cjk(text) else "en"

    # ------------------------------------------------------------------ the work
    def threshold(self, domain: str | None) -> float:
        return self.config.thresholds.get(domain or "", self.config.threshold)

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        c = self.config
        for row in rows:
            row.update({k: None for k in self.outputs()})
        live = [r for r in rows if r.get("reject_reason") is None]
        texts = {r["id"]: clip_text(text_of(r), c.max_chars) for r in live}
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in live:
            lang = self.language_of(row, texts[row["id"]])
            row["score_prompt"], row["score_model"] = self.prompt_sets[lang].prompt_id, self.scorer.model_name
            row["score_status"] = EXEMPT if row["source"] in c.exempt_sources else SCORED
            if row["score_status"] != EXEMPT:
                groups.setdefault(lang, []).append(row)
        for lang, group in sorted(groups.items()):
            self._quality(group, texts, self.prompt_sets[lang], self.judges[lang])
            self._repetition(group, texts, self.prompt_sets[lang], self.judges[lang], lang)
        todo = [r for group in groups.values() for r in group]
        if c.loss_clean:
            self._losses(todo)
        self._decide(todo)
        self._write_review([r for r in todo if r["reject_reason"] or r["repetition_llm"]
                            or r["score_status"] == UNSCORED], texts)
        return rows

    def _quality(self, rows: list[dict[str, Any]], texts: dict[str, str], prompts: Any, judge: Any) -> None:
        rated = [r for r in rows if r["modality"] in self.config.modalities]
        for r in rows:
            if r["modality"] not in self.config.modalities:
                r["score_status"] = REPETITION_ONLY
        if self.config.classify_domain:
            domains = judge.ask("classify", [prompts.classify_prompt(texts[r["id"]]) for r in rated],
                                lambda reply: parse_domain(reply, prompts.domains), prompts.domains)
        else:
            domains = [(r.get("domain") or "general").lower() for r in rated]
        for r, d in zip(rated, domains):
            r["score_domain"] = d
            if d is None:
                r["score_status"] = UNSCORED
        asked = [r for r in rated if r["score_domain"] is not None]
        scores = judge.ask("score", [prompts.score_prompt(texts[r["id"]], r["score_domain"]) for r in asked],
                           parse_score, SCORE_CHOICES)
        for r, s in zip(asked, scores):
            r["quality_score"] = s
            if s is None:
                r["score_status"] = UNSCORED

    def _repetition(self, rows: list[dict[str, Any]], texts: dict[str, str], prompts: Any, judge: Any,
                    lang: str) -> None:
        if not self.config.repetition_check:
            return
        asked = [r for r in rows if not getattr(self.ctx.source(r["source"]), "exempt_repetition", False)]
        answers = judge.ask("repetition", [prompts.repetition_prompt(texts[r["id"]]) for r in asked],
                            parse_yes_no, YES_NO_ZH if lang == "zh" else YES_NO)
        for r, a in zip(asked, answers):
            r["repetition_llm"] = a
            if a is None:
                r["score_status"] = UNSCORED

    def _losses(self, rows: list[dict[str, Any]]) -> None:
        from curate.scoring.backends import chatml

        roles = {"human": "user", "gpt": "assistant"}
        texts = [chatml([{"role": roles.get(t["from"], t["from"]), "content": t["value"] or ""}
                         for t in r["conversations"] or []]) for r in rows]
        for i in range(0, len(rows), self.batch_size):
            for r, v in zip(rows[i:i + self.batch_size], self.loss_scorer.losses(texts[i:i + self.batch_size])):
                r["sample_loss"] = v

    def _decide(self, rows: list[dict[str, Any]]) -> None:
        c = self.config
        for r in rows:
            limit = self.threshold(r["score_domain"])
            if r["repetition_llm"] and c.repetition_reject:
                reject(r, self.name, "repetitive_llm", "the model answered yes to the repetition prompt")
            elif r["quality_score"] is not None and r["quality_score"] < limit:
                reject(r, self.name, "low_quality",
                       f"score {r['quality_score']:g} < {limit:g} (domain {r['score_domain']})")
            elif r["score_status"] == UNSCORED and c.unscored == "reject":
                reject(r, self.name, "unscored", "no usable reply after one retry (or the server failed)")

    def _write_review(self, flagged: list[dict[str, Any]], texts: dict[str, str]) -> None:
        keys = ("id", "orig_id", "source", "modality", "score_domain", "quality_score", "repetition_llm",
                "score_status", "sample_loss", "reject_reason", "reject_detail", "score_prompt", "score_model")
        write_review(self.ctx.layout, self.name,
                     [{k: r.get(k) for k in keys} | {"text": texts[r["id"]][:4000]} for r in flagged])
