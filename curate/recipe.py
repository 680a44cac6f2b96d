"""Recipe: the YAML file that says what to curate and how (validated by pydantic).

Every key is checked before any work starts; a wrong key or value raises RecipeError
naming the file, the key path and what was expected. `--set a.b=c` overrides any key
(values are parsed as YAML scalars, so `--set stages.pack.max_tokens=8192` is an int).
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class RecipeError(ValueError):
    """A recipe that cannot run; the message names file, key and the expectation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------------------- sources
class SourceConfig(_Strict):
    """One dataset: manifests plus the InternVL 2.5 per-dataset settings (sec. 4.1)."""

    name: str
    manifests: list[str] = Field(min_length=1, description="JSONL/Parquet paths or globs")
    modality: Literal["auto", "text", "image", "multi_image", "video", "audio", "interleaved"] = "auto"
    domain: str = "general"
    n_max: int = Field(12, ge=1, le=64, description="max image tiles per sample (InternVL)")
    repeat: float = Field(1.0, gt=0, le=4, description="repeat factor r in (0, 4]")
    augment: bool = False
    exempt_repetition: bool = False
    languages: list[str] | None = None  # keep only these fastText language codes

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ \t"):
            raise ValueError("a source name must be non-empty, with no slashes or spaces")
        return v

    def manifest_paths(self, base: Path) -> list[Path]:
        """Expand globs; relative paths resolve against `base` (the working directory)."""
        paths: list[Path] = []
        for pattern in self.manifests:
            full = pattern if Path(pattern).is_absolute() else str(base / pattern)
            matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
            paths.extend(Path(m) for m in matches)
        return paths


# ---------------------------------------------------------------------------- stages
class StageConfig(_Strict):
    enabled: bool = True


class IngestConfig(StageConfig):
    max_line_bytes: int = Field(8 << 20, ge=1024)


class DownloadConfig(StageConfig):
    """Concurrent, bounded fetching of URL media into the store (curate.stages.download)."""

    concurrency: int = Field(16, ge=1, le=512, description="fetches in flight per worker")
    per_host: int = Field(4, ge=1, description="politeness: fetches in flight per host")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    total_timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    max_bytes: int = Field(64 << 20, ge=1)
    max_redirects: int = Field(5, ge=0)
    allow_hosts: list[str] | None = None
    deny_hosts: list[str] = Field(default_factory=list)
    resize_max_side: int | None = None
    jpeg_quality: int = Field(95, ge=1, le=100)
    options: dict[str, Any] = Field(default_factory=dict)


class MediaConfig(StageConfig):
    """Resolution, validation and probing of media (curate.stages.media)."""

    allowed_roots: list[str] = Field(default_factory=list, description="extra folders media may be read from")
    allow_http: bool = True
    http_timeout_s: float = Field(10.0, gt=0)
    http_retries: int = Field(2, ge=0, le=10)
    max_bytes: int = Field(256 << 20, ge=1)
    max_pixels: int = Field(178_956_970, ge=1, description="decompression-bomb cap")
    min_side: int = Field(8, ge=1)
    tile_size: int = Field(448, ge=14)
    n_min: int = Field(1, ge=1)
    video_frames: int = Field(8, ge=1, le=512)
    max_video_seconds: float = Field(3600.0, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    audio_sample_rate: int = 16000


class FilterConfig(StageConfig):
    """Per-sample filters (filters/). Thresholds live here, not in code."""

    repetition: bool = True
    repetition_threshold: float = Field(0.5, ge=0, le=1)
    heuristics: bool = True
    language: bool = False
    lid_model: str | None = None
    clip_model: str | None = None
    clip_min_score: float = 0.2
    write_review: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="per-rule thresholds")


class DedupeConfig(StageConfig):
    exact: bool = True
    near_text: bool = True
    threshold: float = Field(0.8, gt=0, le=1)
    shingle: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=16)
    near_image: bool = True
    image_hamming: int = Field(4, ge=0, le=64)
    options: dict[str, Any] = Field(default_factory=dict)


class ScoreConfig(StageConfig):
    backend: Literal["transformers", "vllm", "http"] = "transformers"
    model: str | None = None
    endpoint: str | None = None
    threshold: float = Field(7.0, ge=0, le=10)
    repetition_check: bool = True
    options: dict[str, Any] = Field(default_factory=dict)


class TranscribeConfig(StageConfig):
    model: str | None = None  # None: the Whisper tiny.en folder installed by `make setup`
    device: Literal["auto", "cpu", "cuda"] = "auto"
    options: dict[str, Any] = Field(default_factory=dict)


class AudioQAConfig(StageConfig):
    fraction: float = Field(0.0, ge=0, le=1)
    voices: list[str] = Field(default_factory=lambda: ["en-us", "en", "en+f3", "en+m3"])
    max_wer: float = Field(0.1, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


class TokenizeConfig(StageConfig):
    tokenizer: str = Field("models/demo-tokenizer", description="local HF tokenizer folder")
    tokens_per_tile: int = Field(256, ge=1)
    audio_frames_per_second: float = Field(50.0, gt=0, description="audio encoder frame rate")
    audio_pooling: int = Field(3, ge=1, description="frames pooled into one audio token")
    system_prompt: str | None = None
    max_tokens: int | None = Field(None, description="defaults to stages.pack.max_tokens")


class PackConfig(StageConfig):
    max_tokens: int = Field(16384, ge=16, description="l_max")
    max_tiles: int = Field(48, ge=1, description="t_max")
    oversize: Literal["reject", "truncate"] = "reject"
    options: dict[str, Any] = Field(default_factory=dict)


class ShardConfig(StageConfig):
    max_sequences: int = Field(256, ge=1, description="packed sequences per shard")


class StagesConfig(_Strict):
    ingest: IngestConfig = IngestConfig()
    download: DownloadConfig = DownloadConfig()
    media: MediaConfig = MediaConfig()
    filter: FilterConfig = FilterConfig()
    dedupe: DedupeConfig = DedupeConfig()
    score: ScoreConfig = ScoreConfig(enabled=False)
    transcribe: TranscribeConfig = TranscribeConfig(enabled=False)
    audio_qa: AudioQAConfig = AudioQAConfig(enabled=False)
    tokenize: TokenizeConfig = TokenizeConfig()
    pack: PackConfig = PackConfig()
    shard: ShardConfig = ShardConfig()


class RayConfig(_Strict):
    address: str | None = None  # None: RAY_ADDRESS or a local ray.init()
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory: int | None = Field(None, ge=78_643_200)
    concurrency: int | None = Field(None, ge=1, description="workers per CPU stage")


class Recipe(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    sources: list[SourceConfig] = Field(min_length=1)
    source_defaults: dict[str, Any] = Field(default_factory=dict, description="settings for --input sources")
    modality_targets: dict[str, float] = Field(default_factory=dict)
    stages: StagesConfig = StagesConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _unique_sources(self) -> "Recipe":
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        return self

    def source_map(self) -> dict[str, SourceConfig]:
        return {s.name: s for s in self.sources}

    def stage_hash(self, stage: str, upstream: str = "") -> str:
        """Hash of what decides a stage's output: its config, the sources and upstream."""
        cfg = getattr(self.stages, stage).model_dump(mode="json") if hasattr(self.stages, stage) else {}
        payload = {"stage": stage, "cfg": cfg, "upstream": upstream, "seed": self.seed,
                   "sources": [s.model_dump(mode="json") for s in self.sources]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set expects key=value, got '{text}'")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, path: list[str]) -> int:
    """`sources.demo-text.repeat=2` addresses a list item by its name; `sources.0` by index."""
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise RecipeError(f"--set {'.'.join(path)}: no list item named or numbered '{part}'")


def format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid recipe ({err.error_count()} problem(s))"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = "unknown key; check spelling" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}{got_text}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None,
                inputs: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. `inputs` replace the recipe's sources."""
    path = Path(path)
    if not path.exists():
        named = Path("recipes") / f"{path}.yaml"
        if named.exists():
            path = named
        else:
            raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(data).__name__}")
    if inputs:
        defaults = dict(data.get("source_defaults") or {})
        data["sources"] = [
            {**defaults, "name": _source_name(p, i), "manifests": [p]} for i, p in enumerate(inputs)
        ]
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_validation_error(str(path), e)) from None


def _source_name(manifest: str, index: int) -> str:
    stem = Path(manifest).name.split(".")[0] or f"input{index}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)
