"""Speech recognition helpers shared by the transcribe and audio_qa stages (faster-whisper + jiwer).

- `load_whisper(path, device, default=)`: a local CTranslate2 Whisper folder, int8 on CPU,
  float16 on GPU; with no path, the bundled `tiny.en` (transcribe's default) or `base` (the
  audio-QA read-back gate: tiny.en mishears clean speech too often to be a gate). Never a hub
  name: a missing folder raises ModelNotFound before work starts.
- `transcribe(model, audio, ...)`: long audio is cut into windows of `window_s` seconds, each
  cut moved to the quietest 50 ms frame in the last `CUT_SEARCH_S` seconds of the window so
  words are rarely split; segment timestamps are shifted back to the whole clip. Decoding is
  greedy at temperature 0 by default, so the same audio always gives the same text.
- Confidence of a transcript: the duration-weighted mean of Whisper's per-segment
  `avg_logprob` (exp() of it is the mean token probability) and of `no_speech_prob`.
- `wer(ref, hyp)`: word error rate (jiwer) after Whisper's own English text normaliser
  (lower case, no punctuation, spelled numbers as digits, common British spellings mapped to
  Whisper's American ones), so "Forty-two." and "42", "colour" and "color" count as the same word.
- `vote(hypotheses, agree_wer, majority_wer)`: agreement of several transcripts of one clip
  (Baichuan-omni's ASR ensemble): keep when every pair is within `agree_wer`; otherwise
  correct to the transcript that a strict majority agrees with (pairwise WER <=
  `majority_wer`); otherwise drop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate import mediaio
from curate.paths import ModelNotFound, whisper_base_path, whisper_tiny_path

SAMPLE_RATE = 16_000
CUT_SEARCH_S = 5.0  # a window boundary moves back at most this far, to the quietest frame
FRAME_S = 0.05  # frame length of the energy search
SILENCE_FLOOR = 1e-10


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[dict[str, Any]] = field(default_factory=list)  # start, end, text, avg_logprob, no_speech_prob

    @property
    def avg_logprob(self) -> float | None:
        return weighted_mean(self.segments, "avg_logprob")

    @property
    def no_speech_prob(self) -> float | None:
        return weighted_mean(self.segments, "no_speech_prob")

    @property
    def confidence(self) -> float | None:
        lp = self.avg_logprob
        return None if lp is None else math.exp(lp)


def weighted_mean(segments: list[dict[str, Any]], key: str) -> float | None:
    if not segments:
        return None
    weights = [max(s["end"] - s["start"], 1e-3) for s in segments]
    return sum(w * s[key] for w, s in zip(weights, segments)) / sum(weights)


# ---------------------------------------------------------------------------- model
DEFAULT_MODELS = {"tiny.en": whisper_tiny_path, "base": whisper_base_path}


def resolve_model_path(path: str | None, default: str = "tiny.en") -> Path:
    """The recipe's model folder, or a bundled Whisper (make setup): `default` is tiny.en or base."""
    folder = Path(path) if path else DEFAULT_MODELS[default]()
    if not (folder / "model.bin").is_file():
        raise ModelNotFound(f"{folder}: not a CTranslate2 Whisper folder (no model.bin); convert one with "
                            f"ct2-transformers-converter or leave the model key null for {default}")
    return folder


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def load_whisper(path: str | None, device: str = "auto", cpu_threads: int = 1, default: str = "tiny.en") -> Any:
    from faster_whisper import WhisperModel

    device = pick_device(device)
    compute_type = "float16" if device == "cuda" else "int8"
    return WhisperModel(str(resolve_model_path(path, default)), device=device, compute_type=compute_type,
                        cpu_threads=cpu_threads, local_files_only=True)


# ---------------------------------------------------------------------------- audio
def load_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any audio file (or a video's audio track) as float32 mono in [-1, 1]; MediaError if broken."""
    pcm, _ = mediaio.decode_audio(path, sample_rate)
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def loudness_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (digital silence is about -100)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 10 * math.log10(max(rms * rms, SILENCE_FLOOR))


def window_bounds(audio: np.ndarray, window_s: float, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """[start, end) sample ranges of at most window_s seconds, each cut at a quiet frame."""
    n, size = len(audio), int(window_s * sample_rate)
    frame = max(1, int(FRAME_S * sample_rate))
    bounds, start = [], 0
    while n - start > size:
        lo = start + max(size - int(CUT_SEARCH_S * sample_rate), frame)
        hi = start + size
        region = audio[lo:hi][: (hi - lo) // frame * frame].reshape(-1, frame)
        energy = np.square(region).mean(axis=1)[::-1]  # reversed: among equally quiet frames take the latest
        cut = lo + (len(energy) - 1 - int(np.argmin(energy))) * frame if len(energy) else hi
        bounds.append((start, cut))
        start = cut
    bounds.append((start, n))
    return bounds


def transcribe(model: Any, audio: np.ndarray, *, language: str | None = None, vad: bool = False,
               window_s: float = 300.0, options: dict[str, Any] | None = None) -> Transcript:
    """Transcribe a float32 16 kHz clip window by window; timestamps refer to the whole clip."""
    kwargs = {"beam_size": 1, "temperature": 0.0, "condition_on_previous_text": False} | (options or {})
    if not getattr(getattr(model, "model", None), "is_multilingual", True):
        language = language or "en"  # an English-only model (tiny.en) cannot detect languages
    segments: list[dict[str, Any]] = []
    lang, lang_prob = language or "", 1.0
    for start, end in window_bounds(audio, window_s):
        offset = start / SAMPLE_RATE
        segs, info = model.transcribe(audio[start:end], language=language, vad_filter=vad, **kwargs)
        for s in segs:
            segments.append({"start": round(offset + s.start, 3), "end": round(offset + s.end, 3),
                             "text": s.text.strip(), "avg_logprob": float(s.avg_logprob),
                             "no_speech_prob": float(s.no_speech_prob)})
        if start == 0:
            lang, lang_prob = info.language, float(info.language_probability)
            language = language or lang  # later windows keep the first window's language
    text = " ".join(s["text"] for s in segments if s["text"]).strip()
    return Transcript(text, lang, lang_prob, len(audio) / SAMPLE_RATE, segments)


# ---------------------------------------------------------------------------- text agreement
# Whisper transcribes in American spelling; its normaliser maps British spellings with a table that
# ships with the openai-whisper package, not with transformers. These are the common ones in
# image/chart questions, so "What colour ..." read back as "What color ..." is not an error.
BRITISH_TO_AMERICAN = {
    "colour": "color", "colours": "colors", "coloured": "colored", "grey": "gray", "centre": "center",
    "centres": "centers", "metre": "meter", "metres": "meters", "litre": "liter", "litres": "liters",
    "favourite": "favorite", "neighbour": "neighbor", "neighbours": "neighbors", "behaviour": "behavior",
    "organise": "organize", "organised": "organized", "realise": "realize", "recognise": "recognize",
    "analyse": "analyze", "theatre": "theater", "harbour": "harbor", "labour": "labor", "tyre": "tire",
    "tyres": "tires", "jewellery": "jewelry", "aeroplane": "airplane", "programme": "program",
    "kilometre": "kilometer", "kilometres": "kilometers", "travelling": "traveling", "honour": "honor",
}


@functools.lru_cache(maxsize=1)
def _normalizers() -> tuple[Any, Any]:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer(BRITISH_TO_AMERICAN), BasicTextNormalizer()


def normalize(text: str, language: str = "en") -> str:
    english, basic = _normalizers()
    return " ".join((english if language.startswith("en") else basic)(text or "").split())


def wer(reference: str, hypothesis: str, language: str = "en") -> float:
    """Word error rate after normalisation; an empty reference scores 0 only against an empty hypothesis."""
    import jiwer

    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or ""))


def pairwise_wer(texts: list[str], language: str = "en") -> np.ndarray:
    """Symmetric matrix: mean of WER(a, b) and WER(b, a) (WER alone depends on which is the reference)."""
    n = len(texts)
    m = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = (wer(texts[i], texts[j], language) + wer(texts[j], texts[i], language)) / 2
    return m


@dataclass
class Vote:
    action: str  # keep | correct | drop
    choice: int  # index of the transcript to use (keep: 0, the current one)
    mean_wer: float  # mean pairwise WER over all pairs (0 = full agreement)
    max_wer: float


def vote(texts: list[str], agree_wer: float, majority_wer: float, language: str = "en") -> Vote:
    """Agreement of n >= 2 transcripts of one clip; texts[0] is the one currently used."""
    m = pairwise_wer(texts, language)
    n = len(texts)
    pairs = m[np.triu_indices(n, 1)]
    mean, worst = float(pairs.mean()), float(pairs.max())
    if worst <= agree_wer:
        return Vote("keep", 0, mean, worst)
    support = [(int((m[i] <= majority_wer).sum() - 1), -float(m[i].sum()), -i) for i in range(n)]
    best = max(range(n), key=lambda i: support[i])
    if support[best][0] + 1 > n / 2:
        return Vote("keep" if best == 0 else "correct", best, mean, worst)
    return Vote("drop", 0, mean, worst)
