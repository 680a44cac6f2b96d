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
- `error_rate(ref, hyp, language)`: the rate every gate and vote uses. WER as above for
  English and other spaced scripts; for Chinese and Japanese (language zh/ja/yue/wuu, or CJK
  characters in either text) the error rate over text units (filters.text_units: each CJK
  character one unit, a Latin word or a number one), i.e. the character error rate of
  Chinese, and the mixed error rate of Chinese-English code-switching, after Whisper's basic
  normaliser (punctuation of both scripts removed). Chinese has no spaces, so a word error
  rate would count a whole clause as one word.
- `reference_error(ref, hyp, language)`: the transcript gate's rate, characters in every
  language: for spaced scripts the character error rate without spaces, English numbers
  spelled out on both sides (num2words), so a misheard or split word costs its letters, not
  a whole word of a one-word prompt.
- `vote(hypotheses, agree, majority)`: agreement of several transcripts of one clip
  (Baichuan-omni's ASR ensemble): keep when every pair is within `agree`; otherwise correct
  to the transcript that a strict majority agrees with (pairwise error rate <= `majority`);
  otherwise drop.
- `route(...)`: which Whisper decodes a clip. An English-only model (the default tiny.en)
  cannot write Chinese; a clip known to be in another language (recipe, manifest
  `meta.language`, fastText LID column, or a CJK reference transcript) goes to the
  multilingual model with that language, and a clip of unknown language is first put to the
  multilingual model's language detection.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate import mediaio
from curate.paths import ModelNotFound, whisper_base_path, whisper_tiny_path
from filters.text_units import CJK_CHAR, units

SAMPLE_RATE = 16_000
CUT_SEARCH_S = 5.0  # a window boundary moves back at most this far, to the quietest frame
FRAME_S = 0.05  # frame length of the energy search
SILENCE_FLOOR = 1e-10
CJK_LANGUAGES = ("zh", "ja", "yue", "wuu")  # Whisper / fastText codes of languages written without spaces
# Whisper writes Mandarin in traditional or simplified characters from one clip to the next; a
# short simplified-Chinese prompt ("the following are Mandarin sentences") steers it to
# simplified, as references mostly are. options.initial_prompt replaces it.
ZH_PROMPT = "以下是普通话的句子。"


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


def is_multilingual(model: Any) -> bool:
    return bool(getattr(getattr(model, "model", None), "is_multilingual", True))


def base_language(code: str | None) -> str | None:
    """"zh" from "zh", "zh-CN", "zh_Hans" or "__label__zh"; None for no code."""
    if not code:
        return None
    return code.removeprefix("__label__").replace("-", "_").split("_")[0].lower() or None


def script_language(text: str | None) -> str | None:
    """"zh" or "ja" when a text is written in CJK characters (kana: Japanese), else None."""
    if not text or not CJK_CHAR.search(text):
        return None
    return "ja" if any("\u3040" <= c <= "\u30ff" for c in text) else "zh"


def route(language: str | None, reference: str | None, main_multilingual: bool) -> tuple[str, str | None]:
    """(which model decodes the clip, the language to decode it in; None: the model detects it).

    `language` is what the recipe or the sample says; `reference` the sample's transcript, if
    any. Models: "main" (stages.transcribe.model), "multilingual" (model_multilingual), or
    "detect" (unknown language and an English-only main model: the multilingual model's
    language detection decides between the two, see `after_detection`).
    """
    language = base_language(language) or script_language(reference)
    if main_multilingual:
        return "main", language
    if language is None:
        if reference and reference.strip():
            return "main", None  # a Latin-script reference: decoded as it always was (tiny.en: English)
        return "detect", None
    return ("main", "en") if language == "en" else ("multilingual", language)


def whisper_language(model: Any, language: str | None) -> str | None:
    """A language code the model knows: Cantonese and Wu (fastText yue, wuu) are written Chinese
    for models without them (only large-v3 has yue); an unknown code lets the model detect."""
    tokenizer = getattr(model, "hf_tokenizer", None)
    if language is None or tokenizer is None or tokenizer.token_to_id(f"<|{language}|>") is not None:
        return language
    return "zh" if language in CJK_LANGUAGES else None


def after_detection(detected: str, probability: float, min_probability: float = 0.5) -> tuple[str, str]:
    """Route of a clip once the multilingual model has detected its language."""
    if detected != "en" and probability >= min_probability:
        return "multilingual", detected
    return "main", "en"


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
    if not is_multilingual(model):
        language = language or "en"  # an English-only model (tiny.en) cannot detect languages
    elif language == "zh":
        kwargs.setdefault("initial_prompt", ZH_PROMPT)
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


def uses_units(reference: str, hypothesis: str, language: str | None = "en") -> bool:
    """Character (unit) error rate instead of WER: a CJK language, or CJK characters in either text."""
    return base_language(language) in CJK_LANGUAGES or bool(CJK_CHAR.search(f"{reference}{hypothesis}"))


def error_rate(reference: str, hypothesis: str, language: str | None = "en") -> float:
    """WER for spaced scripts; for Chinese/Japanese the error rate over text units (CER, with a Latin
    word or number as one unit in mixed text). Empty reference: 0 only against an empty hypothesis."""
    reference, hypothesis = reference or "", hypothesis or ""
    if not uses_units(reference, hypothesis, language):
        return wer(reference, hypothesis, language or "en")
    import jiwer

    ref, hyp = (" ".join(units(normalize(t, "zh"))) for t in (reference, hypothesis))
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or ""))


def error_name(reference: str, hypothesis: str = "", language: str | None = "en") -> str:
    return "CER" if uses_units(reference, hypothesis, language) else "WER"


_NUMBER = re.compile(r"^(\d+)(st|nd|rd|th|s)?$")


def spell_numbers(text: str) -> str:
    """A normalised English text with its numbers in words ("50th" -> "fiftieth", "19" ->
    "nineteen", "50s" -> "fiftys"): Whisper's normaliser writes spelled numbers as digits, which
    puts "fiftieth" (4 characters as "50th") one edit from "50s" but "sixth" ("6th") two from "6"."""
    from num2words import num2words

    def spell(word: str) -> str:
        m = _NUMBER.match(word)
        if not m:
            return word
        n, suffix = int(m.group(1)), m.group(2)
        if suffix in ("st", "nd", "rd", "th"):
            return num2words(n, to="ordinal")
        return num2words(n) + ("s" if suffix == "s" else "")

    return " ".join(spell(w) for w in text.split())


def _unparenthesize(text: str) -> str:
    """Parentheses as plain punctuation: Whisper's normalisers drop the words between them (its
    "(laughs)"), but in a read reference they are spoken ("extremely long (longer than 255
    characters)")."""
    return text.replace("(", " ").replace(")", " ")


def char_error(reference: str, hypothesis: str, language: str = "en") -> float:
    """Character error rate of two texts after normalisation (parentheses kept as punctuation;
    English: Whisper's normaliser, then numbers in words), spaces left out ("lower case" and
    "lowercase", "n b s" and "nbs" are the same letters): edits over the reference's
    characters; an empty reference scores 0 only against an empty hypothesis."""
    import jiwer

    english = language.startswith("en")
    ref, hyp = ("".join((spell_numbers(normalize(_unparenthesize(t))) if english
                         else normalize(_unparenthesize(t), language)).split())
                for t in (reference, hypothesis))
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp or ""))


def reference_error(reference: str, hypothesis: str, language: str | None = "en") -> tuple[str, float]:
    """(name, rate) of a reference transcript against the ASR text, as the transcript gate judges
    it: characters, not words. For Chinese and Japanese `error_rate` (CER over text units); for
    other languages `char_error`. A word error rate is too coarse for a gate: on a one-word
    reference one misheard word ("fiftieth" heard as "50s", "tick" as "dick") scores 1, the same
    as another clip's word, and a split word ("Call forward and conditional") costs two."""
    if uses_units(reference, hypothesis, language):
        return "CER", error_rate(reference, hypothesis, language)
    return "CER", char_error(reference, hypothesis, language or "en")


def pairwise_error(texts: list[str], language: str | None = "en") -> np.ndarray:
    """Symmetric matrix: mean of the error rate both ways (alone it depends on which is the reference)."""
    n = len(texts)
    m = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = (error_rate(texts[i], texts[j], language)
                                 + error_rate(texts[j], texts[i], language)) / 2
    return m


@dataclass
class Vote:
    action: str  # keep | correct | drop
    choice: int  # index of the transcript to use (keep: 0, the current one)
    mean_wer: float  # mean pairwise error rate over all pairs (0 = full agreement): WER, CER for CJK
    max_wer: float


def vote(texts: list[str], agree_wer: float, majority_wer: float, language: str | None = "en") -> Vote:
    """Agreement of n >= 2 transcripts of one clip; texts[0] is the one currently used."""
    m = pairwise_error(texts, language)
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
