"""Recipe: the YAML file that says what to curate and how (validated by pydantic).

Every key is checked before any work starts; a wrong key or value raises RecipeError
naming the file, the key path and what was expected. `--set a.b=c` overrides any key
(values are parsed as YAML scalars, so `--set stages.pack.max_tokens=8192` is an int).
"""

from __future__ import annotations

import glob
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filters.heuristics import DEFAULT as HEURISTICS


class RecipeError(ValueError):
    """A recipe that cannot run; the message names file, key and the expectation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, use_attribute_docstrings=True)


# ---------------------------------------------------------------------------- sources
class SourceConfig(_Strict):
    """One dataset: manifests plus the InternVL 2.5 per-dataset settings (sec. 4.1)."""

    name: str = Field(examples=["docvqa"])
    """unique source name (letters, digits, - and _); used in ids, rejects and stats"""
    manifests: list[str] = Field(min_length=1, examples=[["data/docvqa/*.jsonl"]])
    """JSONL/Parquet manifest paths or globs (relative to the working directory)"""
    modality: Literal["auto", "text", "image", "multi_image", "video", "audio", "interleaved"] = "auto"
    """modality of the source's samples; auto infers it per sample from its media"""
    domain: str = Field("general", examples=["mathematics"])
    """domain label (used by LLM scoring prompts and thresholds)"""
    n_max: int = Field(12, ge=1, le=64)
    """max image tiles per sample (InternVL: 6-12 ordinary images, 24-36 documents, 1 video)"""
    repeat: float = Field(1.0, gt=0, le=4)
    """repeat factor r in (0, 4]: r < 1 down-samples, r > 1 repeats the source"""
    augment: bool = False
    """random JPEG re-compression (quality 75-100) for image sources, never for video"""
    exempt_repetition: bool = False
    """skip the repetition pass (curated academic datasets, as InternVL 2.5 does)"""
    languages: list[str] | None = Field(None, examples=[["en", "zh"]])
    """keep only these fastText language codes (null keeps all)"""
    media_root: str | None = Field(None, examples=["/data/coco"])
    """folder that relative media paths resolve against (null: the manifest's folder; InternVL meta `root`)"""
    expect_rows: int | None = Field(None, ge=0, examples=[665298])
    """rows the manifests should hold (InternVL meta `length`); ingest warns when it reads another number"""

    @field_validator("media_root")
    @classmethod
    def _absolute_root(cls, v: str | None) -> str | None:
        return os.path.abspath(v) if v else None  # tasks may run in another working directory

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
class ResourcesConfig(_Strict):
    """What one worker of a stage gets; null keeps the stage's own default (curate.stages.base.Resources)."""

    cpus: float | None = Field(None, ge=0, examples=[2])
    """CPUs reserved per task or actor"""
    gpus: float | None = Field(None, ge=0, examples=[1])
    """GPUs per actor (model stages); fractions share a GPU"""
    memory_gb: float | None = Field(None, ge=0, examples=[8])
    """memory reserved per task or actor, so Ray does not overfill a node"""
    actors: int | None = Field(None, ge=1, examples=[4])
    """actor-pool size of a model stage, or the task cap of a stateless stage (null: the stage's default)"""
    batch_size: int | None = Field(None, ge=1, examples=[32])
    """rows per batch handed to the stage (for LLM scoring also the generation batch)"""


class StageConfig(_Strict):
    enabled: bool = True
    """run this stage (false skips it)"""
    resources: ResourcesConfig = ResourcesConfig()
    """Ray resources, workers and batch size of this stage (see stages.*.resources.*)"""


class IngestConfig(StageConfig):
    max_line_bytes: int = Field(8 << 20, ge=1024)
    """a manifest line longer than this is rejected (line_too_long)"""


class DownloadConfig(StageConfig):
    """Concurrent, bounded fetching of URL media into the store (curate.stages.download)."""

    concurrency: int = Field(16, ge=1, le=512)
    """fetches in flight per worker (threads sharing one connection pool)"""
    per_host: int = Field(4, ge=1)
    """politeness: fetches in flight per host within one worker"""
    connect_timeout_s: float = Field(5.0, gt=0)
    """seconds to open a connection"""
    read_timeout_s: float = Field(10.0, gt=0)
    """seconds without a byte before a transfer is abandoned"""
    total_timeout_s: float = Field(60.0, gt=0)
    """seconds one fetch (all bytes, one attempt) may take"""
    retries: int = Field(2, ge=0, le=10)
    """extra attempts for retryable failures (timeouts, 429, 5xx, resets), with backoff and jitter"""
    backoff_s: float = Field(0.5, ge=0)
    """base of the exponential backoff between attempts"""
    max_bytes: int = Field(64 << 20, ge=1)
    """a transfer is aborted (too_large) once it passes this many bytes"""
    max_redirects: int = Field(5, ge=0)
    """redirects followed per fetch (never to a scheme other than http/https)"""
    allow_hosts: list[str] | None = Field(None, examples=[["images.example.org"]])
    """if set, only these hosts (or their subdomains) are fetched"""
    deny_hosts: list[str] = Field(default_factory=list, examples=[["tracker.example.com"]])
    """hosts (or their subdomains) never fetched"""
    allow_private: bool = False
    """also fetch from private, loopback, link-local, multicast, reserved addresses (else: private_address)"""
    allow_networks: list[str] = Field(default_factory=list, examples=[["10.20.0.0/16", "127.0.0.1/32"]])
    """CIDR blocks fetched though not public (an intranet media server), the rest stays refused"""
    resize_max_side: int | None = Field(None, ge=16, examples=[2048])
    """re-encode downloaded images whose longer side exceeds this (null: keep bytes as fetched)"""
    jpeg_quality: int = Field(95, ge=1, le=100)
    """JPEG quality for re-encoded images"""
    user_agent: str = "omnicurate/0.1 (+https://github.com/omnicurate/omnicurate)"
    """User-Agent header sent with every request"""
    retry_failed: bool = False
    """re-fetch URLs whose last attempt failed for good (set by `curate run --retry-failed`)"""
    options: dict[str, Any] = Field(default_factory=dict, examples=[{}])
    """extra keyword arguments for the fsspec file systems (s3://, gs://)"""


    @field_validator("allow_networks")
    @classmethod
    def _networks_ok(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"{net!r} is no CIDR block (e.g. 10.0.0.0/8 or fd00::/8): {e}") from None
        return v


class MediaConfig(StageConfig):
    """Resolution, validation and probing of media (curate.stages.media)."""

    allowed_roots: list[str] = Field(default_factory=list, examples=[["/data/media"]])
    """extra folders local media may be read from (besides each manifest's folder)"""
    max_bytes: int = Field(256 << 20, ge=1)
    """a media file larger than this is rejected (file_too_large)"""
    max_pixels: int = Field(178_956_970, ge=1)
    """decompression-bomb cap: images with more pixels are rejected (image_too_large)"""
    min_side: int = Field(8, ge=1)
    """images with a side shorter than this are rejected (image_too_small)"""
    tile_size: int = Field(448, ge=14)
    """ViT tile side S in pixels (InternVL 448; IXC-2.5 560)"""
    n_min: int = Field(1, ge=1)
    """smallest tile grid considered by the dynamic-resolution rule"""
    video_frames: int = Field(8, ge=1, le=512)
    """frames sampled evenly per video, one tile each"""
    max_video_seconds: float = Field(3600.0, gt=0)
    """longer videos are rejected (video_too_long)"""
    max_audio_seconds: float = Field(600.0, gt=0)
    """longer audio is rejected (audio_too_long)"""
    audio_sample_rate: int = 16000
    """audio is stored as mono FLAC at this rate"""


class FilterConfig(StageConfig):
    """Per-sample filters (filters/, curate.stages.filter). The rules' defaults are
    filters.heuristics.HeuristicThresholds', so the library and the recipe cannot disagree."""

    repetition: bool = True
    """reject answers that repeat themselves (filters.repetition: periodic, tail-loop, n-gram, line signals)"""
    repetition_threshold: float = Field(0.5, ge=0, le=1)
    """repetition score at or above which a sample is rejected (0.5: one signal at its threshold)"""
    heuristics: bool = True
    """InternVL rules (filters.heuristics): empty/trivial answer, answer = question, zero/char runs, duplicate lines,
    long sentences, placeholders"""
    min_answer_chars: int = Field(HEURISTICS.min_answer_chars, ge=0)
    """empty_answer: answers with fewer characters are rejected"""
    max_sentence_words: int = Field(HEURISTICS.max_sentence_words, ge=1)
    """abnormal_sentence_length: a sentence with more words is rejected (English and other spaced scripts)"""
    max_sentence_chars_cjk: int = Field(HEURISTICS.max_sentence_chars_cjk, ge=1)
    """abnormal_sentence_length for mostly Chinese/Japanese sentences (ending at 。！？；… too): more characters are
    rejected (a Latin word counts one; about the English 300 words, as a Chinese word averages 1.5 characters)"""
    max_zero_run: int = Field(HEURISTICS.max_zero_run, ge=2)
    """zero_run: this many zeros in a row are rejected"""
    max_char_run: int = Field(HEURISTICS.max_char_run, ge=2)
    """char_run: one non-space character this many times in a row is rejected"""
    max_duplicate_line_ratio: float = Field(HEURISTICS.max_duplicate_line_ratio, ge=0, le=1)
    """duplicate_lines: answers with a larger share of repeated lines (of 4 or more) are rejected"""
    language: bool = False
    """keep only samples whose answers are in `languages` (fastText LID); sources[].languages applies even if false"""
    languages: list[str] = Field(default_factory=lambda: ["en"], examples=[["en", "zh"]])
    """language codes kept by the language filter (sources[].languages overrides per source)"""
    language_min_score: float = Field(0.5, ge=0, le=1)
    """a sample is rejected only if fastText is at least this sure of a language not kept"""
    lid_model: str | None = Field(None, examples=["models/lid.176.ftz"])
    """fastText LID model file (null: the one installed by `make setup`)"""
    clip_model: str | None = Field(None, examples=["models/clip-vit-b-32"])
    """local open_clip model folder (open_clip_config.json + weights) for image-text agreement (null: off)"""
    clip_min_score: float = Field(0.2, ge=-1, le=1)
    """single-image samples whose answer-image cosine similarity is below this are rejected"""
    clip_resources: ResourcesConfig = ResourcesConfig()
    """Ray resources of the CLIP part (one actor by default, one GPU each when the cluster has GPUs)"""
    nsfw: bool = False
    """NudeNet's 320n detector (filters/nsfw.py, nudenet==3.4.2) on every image and sampled video frame; off by
    default: it costs about 20-35 ms an image on one CPU core, several times the media stage's own work"""
    nsfw_threshold: float = Field(0.5, ge=0, le=1)
    """unsafe_image: a sample with an image or frame where an exposed genitalia, female breast, anus or buttocks
    class (filters.nsfw.UNSAFE_LABELS) scores at least this is rejected, with the labels as detail"""
    nsfw_review_threshold: float = Field(0.3, ge=0, le=1)
    """nsfw_borderline: a sample whose best unsafe score is at least this but under nsfw_threshold is kept, flagged
    and written to review/ (NudeNet reports nothing under 0.25)"""
    write_review: bool = True
    """write every rejected or flagged sample with its scores to <out>/review/filter-*.jsonl for a human"""
    options: dict[str, Any] = Field(default_factory=dict, examples=[{"repetition.tail_units": 4}])
    """repetition signal thresholds as `repetition.<name>` (see filters/repetition.py Thresholds)"""


class DedupeConfig(StageConfig):
    """Exact and near-duplicate removal across the whole run (curate.stages.dedupe)."""

    exact: bool = True
    """drop samples whose normalised text and media bytes equal another sample's"""
    near_text: bool = True
    """MinHash LSH near-duplicate removal (similar text and the same media)"""
    threshold: float = Field(0.8, gt=0, le=1)
    """Jaccard similarity at or above which two texts are near duplicates"""
    threshold_cjk: float = Field(0.6, gt=0, le=1)
    """the same for two mostly Chinese/Japanese texts (units are characters: a 60-character paragraph with one
    13-character clause inserted keeps a Jaccard of 0.70; on real Chinese prose 0.6 finds 99% of one-word/one-clause
    copies and distinct paragraphs stay below 0.46)"""
    shingle: int = Field(5, ge=1)
    """n-gram size of the shingles, in units: words, or characters in CJK text (filters.text_units)"""
    num_perm: int = Field(128, ge=16)
    """MinHash bins (one-permutation hashing; a power of two)"""
    near_image: bool = True
    """compare images by perceptual hash (pHash), so a resized or re-encoded copy is the same image"""
    image_hamming: int = Field(4, ge=0, le=64)
    """pHash Hamming distance at or below which two images are near duplicates"""
    options: dict[str, Any] = Field(default_factory=dict, examples=[{"image_only": True}])
    """image_only (image samples are duplicates when their images are, whatever the text; for
    captioning corpora), video_instructions (default true), video_instruction_cosine (0.9)"""


class BenchmarkFields(_Strict):
    """Which columns of a benchmark file hold an item's parts (a missing column is skipped)."""

    question: str = "question"
    """the question (or prompt) column"""
    choices: str | None = Field("choices", examples=["options"])
    """the answer choices: a list, a dict or a string (null: none)"""
    answer: str | None = Field("answer", examples=["solution"])
    """the answer, indexed when it is text (an index into the choices adds nothing; null: none)"""
    id: str | None = Field(None, examples=["id"])
    """the item's name in reject details (null: its row number)"""


class BenchmarkConfig(_Strict):
    """One evaluation set whose items must not appear in the training data."""

    name: str = Field(examples=["mmlu"])
    """the benchmark's name in reject details and the report"""
    path: str = Field(examples=["benchmarks/mmlu_test.jsonl"])
    """JSONL, JSON array or Parquet file, plain or gzip/zstd (relative to the working directory)"""
    fields: BenchmarkFields = BenchmarkFields()
    """which columns hold the question, choices, answer and id"""


class DecontaminateConfig(StageConfig):
    """Benchmark decontamination by n-gram overlap (curate.stages.decontaminate, curate.decont)."""

    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    """evaluation sets to remove (empty: stage skipped); each `{name, path, fields}`"""
    ngram: int = Field(13, ge=4)
    """a sample sharing this many normalised words in a row with a benchmark item leaves (GPT-3 used 13)"""
    ngram_cjk: int = Field(30, ge=4)
    """the same in characters, for mostly Chinese/Japanese items (30: about 20 Chinese words)"""


class ScoreConfig(StageConfig):
    """LLM quality scoring: domain, 0-10 score, repetition check, loss-based cleaning (curate.stages.score)."""

    backend: Literal["transformers", "vllm", "http"] = "transformers"
    """transformers (CPU/GPU), vllm (GPU, extra `gpu`) or http (an OpenAI-compatible server)"""
    model: str | None = Field(None, examples=["models/qwen2.5-0.5b-instruct"])
    """local model folder for transformers/vllm; for http the served model name (null: stage skipped)"""
    endpoint: str | None = Field(None, examples=["http://127.0.0.1:8000/v1"])
    """base URL of the OpenAI-compatible server for backend http (null: stage skipped)"""
    prompts: str | None = Field(None, examples=["recipes/prompts/score-v1.yaml"])
    """versioned prompt file (domain, per-domain score, repetition); null: recipes/prompts/score-v1.yaml"""
    prompts_zh: str | None = Field("recipes/prompts/score-v1-zh.yaml", examples=["recipes/prompts/score-v1-zh.yaml"])
    """prompt file for Chinese samples (fastText LID language zh, or mostly CJK text); null: `prompts` for all"""
    threshold: float = Field(7.0, ge=0, le=10)
    """samples scoring below this are rejected (low_quality); InternVL 2.5 uses 7"""
    thresholds: dict[str, float] = Field(default_factory=dict, examples=[{"mathematics": 6.0}])
    """per-domain thresholds that replace `threshold` for that domain"""
    classify_domain: bool = True
    """ask the model for the domain first; false uses the source's `domain` key"""
    modalities: list[str] = Field(default_factory=lambda: ["text"], examples=[["text"]])
    """modalities that get a quality score (InternVL 2.5: only text; others get the repetition check only)"""
    repetition_check: bool = True
    """also ask the model whether the sample repeats itself (skipped for sources with exempt_repetition)"""
    repetition_reject: bool = True
    """reject samples the model calls repetitive (repetitive_llm); false only flags them for review"""
    exempt_sources: list[str] = Field(default_factory=list, examples=[["docvqa"]])
    """sources passed through unscored (score_status exempt)"""
    unscored: Literal["keep", "reject"] = "keep"
    """what to do with a sample whose reply stays unparsable after one retry (or the server fails)"""
    cache: bool = True
    """reuse replies stored in <out>/cache/score.sqlite (keyed by model, prompt version and prompt text)"""
    max_chars: int = Field(6000, ge=100)
    """sample text longer than this is cut (head and tail kept) before it goes into a prompt"""
    loss_clean: bool = False
    """Baichuan-omni loss-based cleaning: reject samples whose loss under the reference model is outside mean +/- k std
    of their source"""
    loss_model: str | None = Field(None, examples=["models/qwen2.5-0.5b"])
    """reference model folder for loss_clean (null: `model`); transformers/vllm back-ends only"""
    loss_k: float = Field(1.0, gt=0)
    """k in mean +/- k sigma (Baichuan-omni: 1)"""
    loss_min_samples: int = Field(8, ge=2)
    """sources with fewer scored samples are not loss-cleaned (a std of few points means nothing)"""
    options: dict[str, Any] = Field(default_factory=dict, examples=[{"max_new_tokens": 16, "concurrency": 8}])
    """back-end settings: max_new_tokens, temperature, guided, device, dtype, concurrency, timeout_s, retries,
    api_key_env, gpu_memory_utilization"""


class TranscribeConfig(StageConfig):
    """Speech transcription with faster-whisper (curate.stages.transcribe)."""

    model: str | None = Field(None, examples=["models/whisper-small-ct2"])
    """CTranslate2 Whisper folder (null: the tiny.en model installed by `make setup`)"""
    model_multilingual: str | None = Field(None, examples=["models/whisper-small-ct2"])
    """multilingual CTranslate2 Whisper for clips not in English (Chinese: meta.language, LID or a CJK reference) when
    `model` is English-only; it also detects the language of clips with none (null: Whisper base from `make setup`)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where Whisper runs (cpu: int8, cuda: float16; auto: cuda when CTranslate2 sees a GPU)"""
    language: str | None = Field(None, examples=["en"])
    """spoken language code of every clip (null: per clip from meta.language, the LID column or the reference script,
    else detected)"""
    vad: bool = False
    """skip non-speech with faster-whisper's Silero VAD before decoding"""
    window_seconds: float = Field(300.0, ge=30)
    """long audio is transcribed in windows of at most this many seconds, cut at a quiet frame"""
    max_seconds: float = Field(600.0, gt=0)
    """longer clips are rejected (audio_too_long)"""
    silence_dbfs: float = Field(-60.0, le=0)
    """clips quieter than this RMS level are rejected (silent_audio)"""
    hallucination_check: bool = True
    """reject transcripts Whisper invents over non-speech: outros, credits, loops, too fast (asr_hallucination)"""
    max_words_per_second: float = Field(6.0, gt=0)
    """hallucination check: more words per second of clip than this (twice a fast speaker) is no speech"""
    max_cjk_chars_per_second: float = Field(12.0, gt=0)
    """hallucination check: the same for CJK characters (Mandarin is spoken at about 4-5 per second)"""
    video_audio: bool = False
    """attach a video's audio track as cross-modal audio (an `<audio>` item after its `<video>`)"""
    ensemble: list[str] = Field(default_factory=list, examples=[["models/whisper-base-ct2"]])
    """more Whisper folders; with them, transcripts vote (pairwise WER, CER for Chinese) to keep, correct or drop"""
    agree_wer: float = Field(0.1, ge=0)
    """ensemble: every pair of transcripts within this WER (CER for Chinese) agrees (keep)"""
    majority_wer: float = Field(0.25, ge=0)
    """ensemble: a transcript within this WER (CER for Chinese) of a strict majority replaces the reference (correct)"""
    drop_easy: bool = False
    """ensemble: reject samples every model transcribed exactly (asr_too_easy, as Baichuan-omni)"""
    max_ref_wer: float | None = Field(0.5, ge=0)
    """without an ensemble: a reference transcript farther than this character error rate (normalised texts, numbers
    spelled out) from the ASR text is a mismatch, handled by `on_mismatch` (null: no gate; 0.5 kept no swapped
    transcript of real speech, see docs/benchmarks.md)"""
    on_mismatch: Literal["reject", "replace"] = "reject"
    """a mismatched reference: reject the sample (transcript_mismatch, both texts in the detail) or replace the
    reference by the ASR text (meta.transcript_source = "asr_replaced"; only with a model you trust)"""
    options: dict[str, Any] = Field(default_factory=dict, examples=[{"beam_size": 1}])
    """extra faster-whisper transcribe() arguments (default: greedy, temperature 0)"""


class AudioQAConfig(StageConfig):
    """Spoken questions for image/video QA, kept only if ASR reads them back (curate.stages.audio_qa)."""

    fraction: float = Field(0.0, ge=0, le=1)
    """share of eligible image/video QA samples that get a spoken copy (drawn by hash of seed and id)"""
    variant: Literal["question", "caption"] = "question"
    """question: speak the first question; caption: speak the first quarter of the answer, target the rest"""
    voices: list[str] = Field(default_factory=lambda: ["piper:joe", "piper:joe*0.86", "piper:joe*1.1",
                                                       "piper:joe*0.93"],
                              examples=[["piper:joe", "piper:joe*0.86", "espeak:en-us", "espeak:en+f3"]])
    """voice settings `[espeak:|piper:]name[*pitch]`, one picked per sample from the seed and the sample id (piper:joe
    is the bundled Piper voice, or give a local .onnx path; *pitch shifts it, e.g. *0.86 deeper)"""
    voices_zh: list[str] = Field(default_factory=list, examples=[["piper:models/zh_CN-huayan-medium.onnx"]])
    """Piper voices (local .onnx with its .onnx.json) for Chinese samples; empty: Chinese samples are not eligible and
    are counted as `not eligible: no Chinese voice` (espeak-ng Mandarin read back by Whisper base had CER above 2.9)"""
    tts: Literal["espeak", "piper"] = "espeak"
    """back-end of voices written without a prefix: espeak (espeak-ng binary) or piper (onnxruntime)"""
    speed: int = Field(160, ge=60, le=450)
    """espeak-ng speaking rate in words per minute at rate 1"""
    rate: tuple[float, float] = Field((0.9, 1.1), examples=[[0.9, 1.1]])
    """per-clip speaking-rate factor, drawn uniformly from [low, high] by seed and sample id ([1, 1]: off)"""
    pitch: tuple[float, float] = Field((0.95, 1.05), examples=[[0.95, 1.05]])
    """per-clip pitch factor (applied by resampling, times the voice's own *pitch), drawn like rate"""
    noise_scale: tuple[float, float] = Field((0.5, 0.8), examples=[[0.5, 0.8]])
    """per-clip Piper phoneme noise (voice default 0.667): varies the voice quality"""
    noise_w: tuple[float, float] = Field((0.6, 1.0), examples=[[0.6, 1.0]])
    """per-clip Piper phoneme-duration noise (voice default 0.8): varies the rhythm"""
    asr_model: str | None = Field(None, examples=["models/whisper-small-ct2"])
    """CTranslate2 Whisper folder for the read-back check (null: Whisper base from `make setup`)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where the read-back Whisper runs"""
    max_wer: float = Field(0.1, ge=0)
    """a clip whose normalised read-back WER exceeds this is rejected (tts_asr_mismatch)"""
    max_cer: float = Field(0.1, ge=0)
    """the same for Chinese clips (voices_zh), on character error rate (a Latin word counts as one unit)"""
    max_chars: int = Field(300, ge=10)
    """longer spoken texts are not synthesized (the sample is not eligible)"""
    min_caption_words: int = Field(12, ge=4)
    """caption variant: answers with fewer words (characters in Chinese) are not eligible"""

    @field_validator("rate", "pitch", "noise_scale", "noise_w")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 3:
            raise ValueError(f"give [low, high] with 0 < low <= high <= 3, got {list(v)}")
        return v
class TokenizeConfig(StageConfig):
    tokenizer: str = "data/demo/tokenizer"
    """local Hugging Face tokenizer folder (must hold the chat and media special tokens)"""
    tokens_per_tile: int = Field(256, ge=1)
    """LLM tokens per image tile (InternVL: 1024 ViT tokens, pixel-unshuffle x0.5; IXC-2.5: 400)"""
    audio_frames_per_second: float = Field(50.0, gt=0)
    """audio encoder frame rate (Whisper: 50 Hz)"""
    audio_pooling: int = Field(3, ge=1)
    """encoder frames average-pooled into one audio token (M2-omni: 3)"""
    system_prompt: str | None = Field(None, examples=["You are a helpful assistant."])
    """system turn added to samples that have none (null: no system turn)"""


class PackConfig(StageConfig):
    max_tokens: int = Field(16384, ge=16)
    """l_max: token budget of one packed sequence (InternVL 2.5: 16384)"""
    max_tiles: int = Field(48, ge=1)
    """t_max: image-tile budget of one packed sequence (InternVL 2.5: 48)"""
    split: bool = True
    """split over-budget conversations at turn boundaries into parts that fit (never inside media)"""
    truncate: bool = False
    """cut a single over-budget round at the budget (before any media span it would break)"""
    mode: Literal["global", "stream", "partitioned"] = "global"
    """global: one pack_2d over all samples; stream: bounded-memory windows; partitioned: Ray tasks"""
    window: int = Field(50_000, ge=100)
    """samples per window in stream mode"""
    partitions: int = Field(4, ge=1)
    """partitions packed in parallel Ray tasks in partitioned mode (same source mix in each)"""


class ShardConfig(StageConfig):
    max_sequences: int = Field(256, ge=1)
    """packed sequences per shard"""
    val_shards: int = Field(0, ge=0, examples=[1])
    """the last N shards form Energon's val split (.nv-meta/split.yaml), the rest train; 0: all train"""


class StagesConfig(_Strict):
    ingest: IngestConfig = IngestConfig()
    download: DownloadConfig = DownloadConfig()
    media: MediaConfig = MediaConfig()
    filter: FilterConfig = FilterConfig()
    dedupe: DedupeConfig = DedupeConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    score: ScoreConfig = ScoreConfig(enabled=False)
    transcribe: TranscribeConfig = TranscribeConfig(enabled=False)
    audio_qa: AudioQAConfig = AudioQAConfig(enabled=False)
    tokenize: TokenizeConfig = TokenizeConfig()
    pack: PackConfig = PackConfig()
    shard: ShardConfig = ShardConfig()


class RayConfig(_Strict):
    address: str | None = Field(None, examples=["auto"])
    """Ray cluster address (null: RAY_ADDRESS, else a local Ray)"""
    num_cpus: int | None = Field(None, ge=1, examples=[8])
    """CPUs of the local Ray (null: all)"""
    object_store_memory: int | None = Field(None, ge=78_643_200, examples=[2_000_000_000])
    """object store bytes of the local Ray (null: Ray's default)"""
    concurrency: int | None = Field(None, ge=1, examples=[4])
    """default `resources.actors` of every stage without its own: task cap of CPU stages, pool size of actor stages"""


class TrainConfig(_Strict):
    """The reference training loop (`curate train`): model folders, what trains, optimiser, balance."""
    llm: str = Field("data/demo/models/llm", examples=["models/qwen2.5-0.5b-instruct"])
    """local AutoModelForCausalLM folder (its vocabulary must cover stages.tokenize.tokenizer)"""
    vision: str = Field("data/demo/models/vision", examples=["models/internvit-300m"])
    """local vision tower folder (CLIP/SigLIP vision model or AutoModel vision encoder)"""
    audio: str = Field("data/demo/models/audio", examples=["models/whisper-large-v3"])
    """local Whisper folder (encoder + feature extractor)"""
    freeze: list[Literal["vision", "audio", "llm", "vision_projector", "audio_projector"]] = Field(
        default_factory=lambda: ["vision", "audio"], examples=[["vision", "audio"]])
    """frozen parts; sft-stage3 freezes both encoders and trains projectors + LLM (M2-omni stage 3)"""
    lr: float = Field(1e-5, gt=0)
    """peak learning rate (M2-omni stage 3: 1e-5; the tiny demo models need ~3e-3)"""
    warmup_steps: int = Field(0, ge=0)
    """linear warm-up steps, then cosine decay to 10% of lr at max_steps"""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay"""
    max_steps: int = Field(1000, ge=1)
    """optimizer steps (--max-steps overrides)"""
    sequences_per_step: int = Field(1, ge=1)
    """packed sequences per micro-step on each rank"""
    grad_accum: int = Field(1, ge=1)
    """micro-steps per optimizer step"""
    grad_clip: float = Field(1.0, ge=0)
    """max global gradient norm (0: off)"""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: fp32 on CPU, bf16 autocast on GPU"""
    gradient_checkpointing: bool = False
    """recompute LLM activations in the backward pass (memory for time)"""
    loss_averaging: Literal["square", "token", "sample"] = "square"
    """InternVL 2.5 sec. 3.4: token weight 1/x^0.5 (square), 1 (token) or 1/x (sample); x = response tokens"""
    balance: Literal["none", "step", "dynamic"] = "none"
    """M2-omni modality balance: none, step (pre-training) or dynamic (instruction tuning)"""
    balance_alpha: float = Field(10.0, gt=0)
    """step balance: alpha (M2-omni: 10)"""
    converged_loss: dict[str, float] = Field(default_factory=dict, examples=[{"text": 1.9, "image": 1.2}])
    """step balance: L_i* per modality, the loss each converges to trained alone on a small subset"""
    balance_window: int = Field(3, ge=2)
    """dynamic balance: H, validation segments in the slope window (weights 1 for the first H)"""
    balance_f: float = Field(1.0, gt=0)
    """dynamic balance: f, scale of the softmax over s_i"""
    val_interval: int = Field(10, ge=1)
    """dynamic balance: optimizer steps per validation segment"""
    val_every: int = Field(8, ge=0)
    """every n-th packed sequence is held out for validation (0: none; dynamic balance needs some)"""
    seed: int = 0
    """seed of the model init, data order and dropout"""
    checkpoint_interval: int = Field(0, ge=0)
    """optimizer steps between checkpoints in <shards run>/train/ (0: only at the end)"""
    checkpoint_dir: str | None = Field(None, examples=["runs/x/train"])
    """where checkpoints go (null: <run folder>/train)"""


class Recipe(_Strict):
    name: str = Field(examples=["sft-stage3"])
    """recipe name; the default run folder is runs/<name>"""
    description: str = ""
    """free text"""
    seed: int = 0
    """seed for every random choice (mixture, augmentation, voices): same seed, same shards"""
    sources: list[SourceConfig] = Field(min_length=1)
    """the datasets (see sources[].*)"""
    sources_from: str | None = Field(None, examples=["internvl_meta.json"])
    """an InternVL meta file whose datasets are added to sources when the recipe loads (docs/manifests.md)"""
    source_defaults: dict[str, Any] = Field(default_factory=dict, examples=[{"n_max": 6}])
    """source settings used for manifests given with --input or a meta file"""
    modality_targets: dict[str, float] = Field(default_factory=dict, examples=[{"text": 0.25}])
    """target fraction of samples per modality, met by down-sampling (M2-omni: ~25% text)"""
    stages: StagesConfig = StagesConfig()
    ray: RayConfig = RayConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _read_sources_from(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sources_from"):
            from curate.manifest_formats import sources_from_meta

            defaults = dict(data.get("source_defaults") or {})
            meta = [defaults | s for s in sources_from_meta(data["sources_from"])]
            data = {**data, "sources": list(data.get("sources") or []) + meta, "sources_from": None}
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> "Recipe":
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        return self

    def source_map(self) -> dict[str, SourceConfig]:
        return {s.name: s for s in self.sources}


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
                inputs: list[str] | None = None, meta: str | None = None) -> Recipe:
    """Read, override and validate a recipe. `inputs` (manifests) and `meta` (an InternVL meta
    file's entries) replace the recipe's sources."""
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
    if meta:
        data["sources_from"] = meta
        if not inputs:
            data["sources"] = []
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
