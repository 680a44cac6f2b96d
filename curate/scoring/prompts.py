"""Versioned prompt templates for LLM scoring (recipes/prompts/score-v*.yaml).

A prompt file holds a `version`, a `system` message, the `domains`, a `classify` template,
one `score` template per domain (plus `default`) and a `repetition` template. The stored
prompt id is `<version>@<sha256(file)[:8]>`: editing the text without bumping the version
still changes the id, so cached replies are never reused for a different prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROMPTS = "recipes/prompts/score-v1.yaml"
TASKS = ("classify", "score", "repetition")


@dataclasses.dataclass(frozen=True)
class PromptSet:
    version: str
    prompt_id: str
    system: str
    domains: tuple[str, ...]
    classify: str
    score: dict[str, str]
    repetition: str

    def messages(self, user: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": user}]

    def classify_prompt(self, text: str) -> list[dict[str, str]]:
        return self.messages(self.classify.format(text=text, domains=", ".join(self.domains)))

    def score_prompt(self, text: str, domain: str) -> list[dict[str, str]]:
        template = self.score.get(domain, self.score["default"])
        return self.messages(template.format(text=text, domain=domain, domains=", ".join(self.domains)))

    def repetition_prompt(self, text: str) -> list[dict[str, str]]:
        return self.messages(self.repetition.format(text=text))


def resolve_path(path: str | None) -> Path:
    """Relative paths resolve against the working directory, then the project root."""
    p = Path(path or DEFAULT_PROMPTS)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


def load_prompts(path: str | None = None) -> PromptSet:
    """Read and check a prompt file; errors name the file and the missing key."""
    p = resolve_path(path)
    if not p.exists():
        raise FileNotFoundError(f"stages.score.prompts: prompt file {p} not found")
    raw = p.read_bytes()
    data: Any = yaml.safe_load(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a prompt file must be a mapping")
    missing = [k for k in ("version", "domains", "classify", "score", "repetition") if k not in data]
    if missing:
        raise ValueError(f"{p}: missing keys {missing}")
    score = data["score"]
    if isinstance(score, str):
        score = {"default": score}
    if "default" not in score:
        raise ValueError(f"{p}: score needs a 'default' template (used for domains without their own)")
    domains = tuple(str(d).lower() for d in data["domains"])
    if not domains:
        raise ValueError(f"{p}: domains must not be empty")
    prompt_set = PromptSet(
        version=str(data["version"]),
        prompt_id=f"{data['version']}@{hashlib.sha256(raw).hexdigest()[:8]}",
        system=str(data.get("system") or "").strip(),
        domains=domains,
        classify=str(data["classify"]),
        score={str(k).lower(): str(v) for k, v in score.items()},
        repetition=str(data["repetition"]),
    )
    for name, template in [("classify", prompt_set.classify), ("repetition", prompt_set.repetition),
                           *[(f"score.{k}", v) for k, v in prompt_set.score.items()]]:
        if "{text}" not in template:
            raise ValueError(f"{p}: template {name} has no {{text}} placeholder")
        try:
            template.format(text="", domain="", domains="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{p}: template {name} has an unknown placeholder or stray brace: {e}") from None
    return prompt_set


def clip_text(text: str, max_chars: int) -> str:
    """Keep head and tail of a long sample: repetition often sits at the end."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n[...]\n" + text[-half:]
