"""Transcribe: faster-whisper on every audio item, in an actor pool (one model load per actor).

For each sample with audio:
1. The clip is decoded (16 kHz mono), checked (broken -> `broken_audio`, longer than
   `max_seconds` -> `audio_too_long`, RMS below `silence_dbfs` -> `silent_audio`) and
   transcribed window by window (curate.asr); an empty transcript -> `no_speech`, one Whisper
   invented over non-speech -> `asr_hallucination` (filters.asr_hallucination). These
   rejects apply to speech samples (modality audio); an attached video track that fails
   only leaves the video without its audio.
2. Columns: `asr_text`, `asr_language`, `asr_segments` (item, start, end, text, avg_logprob,
   no_speech_prob), `asr_avg_logprob`, `asr_no_speech_prob`, `asr_confidence` (exp of the
   mean log-probability), `asr_wer` (against the sample's reference transcript when it has
   one) and `asr_action`.
3. Where the transcript goes. A sample's *reference transcript* is `meta.transcript` when the
   manifest has that field, else, for an audio sample with one audio item, its first
   assistant turn (the ASR format "<audio> Transcribe the speech." -> text). A sample whose
   reference is empty (no `transcript` and an empty assistant turn) gets the ASR text
   written into that turn and into `meta.transcript`, with `meta.transcript_source = "asr"`
   (asr_action `filled`).
   The transcript gate (one model): a reference farther than `max_ref_wer` from the ASR text
   is a mismatch, e.g. another clip's transcript. The distance is counted in characters
   (curate.asr.reference_error: normalised texts, English numbers spelled out, spaces left
   out; CER over text units for Chinese), not words: on a one-word prompt a word error rate
   is 0 or 1 and cannot tell "fiftieth" heard as "50s" from another clip's word. By default
   (`on_mismatch: reject`) the sample is rejected `transcript_mismatch` with the rate and both
   texts in the detail (asr_action `mismatch`); `replace` writes the ASR text instead
   (meta.transcript_source = "asr_replaced", asr_action `replaced`). Rejecting is the default:
   above the line tiny.en mishears a clip (a one-word prompt, an ordinal heard as digits) about
   as often as the reference is wrong, and a lost sample costs less than a wrong target.
4. Ensemble (`ensemble` lists more model folders): every model transcribes the clip; with
   the reference they vote (curate.asr.vote): `keep`, `correct` (the reference is replaced
   by the majority transcript, meta.transcript_source = "asr_majority") or reject
   `asr_disagreement`; it replaces the one-model gate (several models outvote one
   mishearing). `drop_easy` rejects samples every model got exactly right (`asr_too_easy`,
   Baichuan-omni drops them from SFT).
5. Languages: the default `model` (tiny.en) is English-only. A clip whose language is known
   and not English (recipe `language`, manifest `meta.language`, a fastText `language`
   column, or a reference transcript in CJK characters) is decoded by `model_multilingual`
   (Whisper base from `make setup`) in that language; a clip with neither language nor
   reference is first put to that model's language detection (curate.asr.route). English
   clips, and every clip when `model` is multilingual, go to `model` as before. Chinese
   transcripts are compared with the reference and each other by character error rate
   (curate.asr.error_rate; the column is still `asr_wer`). Ensemble models that are
   English-only sit out the vote on a clip that is not English.
6. `video_audio`: a video with an audio track gets that track as cross-modal audio
   (Baichuan-omni's video-audio-text data): stored as FLAC, transcribed, added as an audio
   item right after the video with an `<audio>` placeholder right after `<video>`.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import pyarrow as pa

from curate import asr
from curate.mediaio import MediaError
from curate.records import PLACEHOLDER_RE, PLACEHOLDERS, RowError, dumps_meta, reject
from curate.stages.base import Resources, Stage, model_name
from curate.store import MediaStore
from curate.tts import SAMPLE_RATE
from filters import asr_hallucination as hallucination

SEGMENT_TYPE = pa.struct([("item", pa.int32()), ("start", pa.float64()), ("end", pa.float64()),
                          ("text", pa.string()), ("avg_logprob", pa.float64()), ("no_speech_prob", pa.float64())])
EXCERPT_CHARS = 300  # each text shown in a transcript_mismatch detail


class ClipError(RowError):
    """An audio clip that cannot be used; `reason` is the reject reason."""


def reference_transcript(row: dict[str, Any], meta: dict[str, Any]) -> tuple[str | None, int | None]:
    """(text, index of the assistant turn holding it or None); (None, None) when the sample has none."""
    if isinstance(meta.get("transcript"), str):
        return meta["transcript"], None
    audio = [m for m in row.get("media") or [] if m["kind"] == "audio"]
    if row.get("modality") != "audio" or len(audio) != 1:
        return None, None
    for i, t in enumerate(row["conversations"]):
        if t["from"] == "gpt":
            return t["value"], i
    return None, None


class TranscribeStage(Stage):
    name: ClassVar[str] = "transcribe"
    resources: ClassVar[Resources] = Resources(cpus=1, actors=1, batch_size=8)

    def default_resources(self) -> Resources:
        return self.resources.with_(gpus=1 if self.config.device == "cuda" else None)

    def model_label(self) -> str:
        return model_name(self.config.model, "whisper-tiny.en")

    def threads(self) -> int:
        """CPU threads of each Whisper model: the CPUs the runner granted a worker (resources.cpus)."""
        return max(1, int(self.resolved_resources().cpus))

    def inputs(self) -> list[str]:
        return ["media", "conversations", "meta", "modality"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"asr_text": pa.string(), "asr_language": pa.string(), "asr_segments": pa.list_(SEGMENT_TYPE),
                "asr_avg_logprob": pa.float64(), "asr_no_speech_prob": pa.float64(),
                "asr_confidence": pa.float64(), "asr_wer": pa.float64(), "asr_action": pa.string()}

    def validate(self) -> None:
        """Fail before work starts when a model folder is missing."""
        for path in [self.config.model, *self.config.ensemble]:
            asr.resolve_model_path(path)
        asr.resolve_model_path(self.config.model_multilingual, default="base")

    def setup(self) -> None:
        self._models: list[Any] | None = None
        self._multilingual: Any = None
        self.store = MediaStore(self.ctx.media_dir)

    @property
    def models(self) -> list[Any]:
        """Whisper models, loaded once per actor on the first clip (batches without audio never pay)."""
        if self._models is None:
            cfg = self.config
            threads = self.threads()
            self._models = [asr.load_whisper(p, cfg.device, threads) for p in [cfg.model, *cfg.ensemble]]
        return self._models

    @property
    def multilingual(self) -> Any:
        """The multilingual Whisper, loaded on the first clip that needs it (English corpora never do)."""
        if self._multilingual is None:
            cfg = self.config
            self._multilingual = asr.load_whisper(cfg.model_multilingual, cfg.device, self.threads(),
                                                  default="base")
        return self._multilingual

    # ------------------------------------------------------------------ rows
    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            row.update({k: None for k in self.outputs()})
            if not row.get("media"):
                continue
            if self.config.video_audio:
                self.attach_video_audio(row)
            try:
                self.process_row(row)
            except ClipError as e:
                reject(row, self.name, e.reason, str(e))
        return rows

    def process_row(self, row: dict[str, Any]) -> None:
        audio_idx = [i for i, m in enumerate(row["media"]) if m["kind"] == "audio"]
        if not audio_idx:
            return
        meta = json.loads(row.get("meta") or "{}")
        language = self.config.language or meta.get("language") or row.get("language")
        reference = reference_transcript(row, meta)[0] if len(audio_idx) == 1 else None
        texts, segments, results = [], [], []
        for i in audio_idx:
            item = row["media"][i]
            try:
                result = self.transcribe_item(item, language, reference)
            except ClipError:
                if row.get("modality") == "audio":
                    raise
                continue  # a video's soundtrack without speech is still the video's audio
            results.append(result)
            texts.append(result[0].text)
            segments += [{"item": i, **s} for s in result[0].segments]
        if not results:
            return
        row.update(asr_text="\n".join(t for t in texts if t), asr_language=results[0][0].language,
                   asr_segments=segments, asr_avg_logprob=asr.weighted_mean(segments, "avg_logprob"),
                   asr_no_speech_prob=asr.weighted_mean(segments, "no_speech_prob"))
        row["asr_confidence"] = None if row["asr_avg_logprob"] is None else math.exp(row["asr_avg_logprob"])
        if len(audio_idx) == 1 and len(results) == 1:
            self.decide(row, results[0])

    def transcribe_item(self, item: dict[str, Any], language: str | None = None,
                        reference: str | None = None) -> list[asr.Transcript]:
        """One clip through the models its language needs (the first result is the one used)."""
        cfg = self.config
        try:
            audio = asr.load_audio(item["path"], SAMPLE_RATE)
        except (MediaError, OSError, TypeError) as e:
            raise ClipError("broken_audio", f"cannot decode {item.get('ref')}: {e}") from None
        seconds = len(audio) / SAMPLE_RATE
        if seconds > cfg.max_seconds:
            raise ClipError("audio_too_long", f"{seconds:.1f}s > stages.transcribe.max_seconds={cfg.max_seconds}")
        level = asr.loudness_dbfs(audio)
        if level < cfg.silence_dbfs:
            raise ClipError("silent_audio",
                            f"RMS {level:.1f} dBFS < stages.transcribe.silence_dbfs={cfg.silence_dbfs}")
        models, language = self.models_for(audio, language, reference)
        out = [asr.transcribe(m, audio, language=language, vad=cfg.vad, window_s=cfg.window_seconds,
                              options=cfg.options) for m in models]
        if not out[0].text:
            raise ClipError("no_speech", f"Whisper heard no speech in {seconds:.1f}s of audio")
        if cfg.hallucination_check and (found := hallucination.check(
                out[0].text, seconds, cfg.max_words_per_second, cfg.max_cjk_chars_per_second)):
            raise ClipError("asr_hallucination", "; ".join(found))
        return out

    def models_for(self, audio: Any, language: str | None, reference: str | None) -> tuple[list[Any], str | None]:
        """The Whisper models for one clip (main first, then the ensemble) and its language."""
        main, *ensemble = self.models
        which, language = asr.route(language, reference, asr.is_multilingual(main))
        if which == "detect":
            detected, probability, _ = self.multilingual.detect_language(audio)
            which, language = asr.after_detection(detected, probability)
        first = main if which == "main" else self.multilingual
        language = asr.whisper_language(first, language)
        if language in (None, "en"):
            return [first, *ensemble], language
        return [first, *(m for m in ensemble if asr.is_multilingual(m))], language

    # ------------------------------------------------------------------ the transcript
    def decide(self, row: dict[str, Any], results: list[asr.Transcript]) -> None:
        cfg = self.config
        meta = json.loads(row["meta"] or "{}")
        ref, turn = reference_transcript(row, meta)
        heard = [r.text for r in results]
        lang = results[0].language or "en"
        if ref is None:
            row["asr_action"] = "transcribed"
            return
        if not ref.strip():
            self.set_transcript(row, meta, turn, heard[0], "asr")
            row["asr_action"] = "filled"
            return
        row["asr_wer"] = asr.error_rate(ref, heard[0], lang)
        row["asr_action"] = "checked"
        if len(heard) < 2:
            self.gate(row, meta, turn, ref, heard[0], lang)
            return
        verdict = asr.vote([ref, *heard], cfg.agree_wer, cfg.majority_wer, lang)
        detail = (f"mean pairwise {asr.error_name(ref, heard[0], lang)} {verdict.mean_wer:.3f}, "
                  f"max {verdict.max_wer:.3f} over {len(heard)} models")
        if verdict.action == "drop":
            reject(row, self.name, "asr_disagreement", detail)
        elif cfg.drop_easy and verdict.max_wer == 0.0:
            reject(row, self.name, "asr_too_easy", "every model transcribed the reference exactly")
        elif verdict.action == "correct":
            self.set_transcript(row, meta, turn, [ref, *heard][verdict.choice], "asr_majority")
        row["asr_action"] = verdict.action

    def gate(self, row: dict[str, Any], meta: dict[str, Any], turn: int | None, ref: str, heard: str,
             lang: str) -> None:
        """One model: a reference farther than max_ref_wer from the ASR text (by characters,
        curate.asr.reference_error) is a mismatch."""
        cfg = self.config
        name, rate = asr.reference_error(ref, heard, lang)
        if not mismatched(rate, cfg.max_ref_wer):
            return
        if cfg.on_mismatch == "replace":
            self.set_transcript(row, meta, turn, heard, "asr_replaced")
            row["asr_action"] = "replaced"
            return
        row["asr_action"] = "mismatch"
        reject(row, self.name, "transcript_mismatch",
               f"{name} {rate:.3f} > stages.transcribe.max_ref_wer "
               f"{cfg.max_ref_wer}: reference {excerpt(ref)!r}, heard {excerpt(heard)!r}")

    @staticmethod
    def set_transcript(row: dict[str, Any], meta: dict[str, Any], turn: int | None, text: str,
                       source: str) -> None:
        if turn is None:  # the reference came from meta.transcript: fill the first empty assistant turn
            turn = next((i for i, t in enumerate(row["conversations"]) if t["from"] == "gpt"
                         and not t["value"].strip()), None)
        if turn is not None:
            row["conversations"][turn]["value"] = text
        meta.update(transcript=text, transcript_source=source)
        row["meta"] = dumps_meta(meta)

    # ------------------------------------------------------------------ video soundtracks
    def attach_video_audio(self, row: dict[str, Any]) -> None:
        """Add each video's audio track as an audio item (and `<audio>` after its `<video>`)."""
        media = row["media"]
        for i in reversed(range(len(media))):
            if media[i]["kind"] != "video" or not media[i].get("path"):
                continue
            try:
                pcm, seconds = asr.mediaio.decode_audio(media[i]["path"], SAMPLE_RATE)
                flac = asr.mediaio.pcm_to_flac(pcm, SAMPLE_RATE)
            except MediaError:
                continue  # no audio stream: nothing to attach
            if seconds > self.config.max_seconds:
                continue
            path, sha = self.store.put_bytes(flac, ".flac")
            item = {k: None for k in media[i]} | {"kind": "audio", "ref": f"{media[i]['ref']}#audio",
                                                  "path": str(path), "sha256": sha, "bytes": len(flac),
                                                  "mime": "audio/flac", "duration": seconds, "tiles": 0}
            if _insert_after_placeholder(row["conversations"], i, PLACEHOLDERS["audio"]):
                media.insert(i + 1, item)


def mismatched(error_rate: float | None, max_ref_wer: float | None) -> bool:
    """The gate's rule: the reference is not the clip's when its error rate against the ASR text
    exceeds max_ref_wer (None: no gate)."""
    return max_ref_wer is not None and error_rate is not None and error_rate > max_ref_wer


def excerpt(text: str, max_chars: int = EXCERPT_CHARS) -> str:
    """A text for a reject detail: whitespace collapsed, head and tail of a long one."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return f"{text[:half]} [...] {text[-half:]}"


def _insert_after_placeholder(turns: list[dict[str, str]], index: int, tag: str) -> bool:
    """Put `tag` right after the index-th media placeholder of the conversation (media order)."""
    seen = 0
    for t in turns:
        for m in PLACEHOLDER_RE.finditer(t["value"]):
            if seen == index:
                t["value"] = t["value"][: m.end()] + tag + t["value"][m.end():]
                return True
            seen += 1
    return False
