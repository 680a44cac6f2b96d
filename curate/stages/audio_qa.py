"""Audio-QA: spoken copies of image/video QA samples, kept only when ASR reads them back.

M2-omni stage 3 and Baichuan-omni turn the question of image-text and video-text samples into
speech so the model learns to answer a spoken question about a picture or a video:

1. Draw: a sample is eligible when it has image or video media, no audio, and a first human
   turn with question text of at most `max_chars`. It is drawn when a hash of (seed, id)
   falls below `fraction`, so the same recipe and seed draw the same samples.
2. Speak: the question (placeholders and `Image-N:` tags removed) is spoken by the TTS
   back-end (curate.tts) in a voice picked from `voices` by (seed, id), with a speaking
   rate, pitch and Piper noise scales drawn per clip from the `rate`/`pitch`/`noise_scale`/
   `noise_w` ranges (Baichuan-omni speaks in many timbres), stored as 16 kHz mono FLAC
   with its duration (tokenize counts audio tokens from it). Voice and parameters go in
   the row (`audio_qa_voice`, `audio_qa_tts_params`) and the meta.
3. Gate: Whisper (base unless `asr_model` is set) transcribes the clip; WER after Whisper's
   text normalisation must be at most `max_wer`, else the new sample is a reject
   (`tts_asr_mismatch`, WER in the detail).
4. New row: id derived from the parent's, origin `synthesized:audio_qa`, modality
   `audio_qa`; the first human turn keeps its `<image>`/`<video>` placeholders (with their
   tags) and its text is replaced by `<audio>`; the audio item is inserted in media order.
   The parent sample stays as it is. Both kept and rejected new rows count as
   `synthesized` in the stats, so samples_in + synthesized = samples_out + rejected holds.

Variant `caption` (Baichuan-omni's image-audio-text data): the first answer is split 1:3 by
words (by characters in Chinese); the first quarter is spoken, the rest becomes the answer.

Chinese (the filter's fastText `language` zh, else a mostly-CJK spoken text) is spoken only by
the Piper voices in `voices_zh`, which the user supplies: no Chinese voice ships with the
project, and espeak-ng's Mandarin read back by Whisper base was unintelligible (CER above 2.9).
With `voices_zh` empty (the default) a Chinese sample is not eligible: it passes through
untouched, its `audio_qa_not_eligible` column says "no Chinese voice", and the stage's marker,
the run's stats.json (`not_eligible`) and report count it. With voices, the read-back is
decoded as Chinese and gated on character error rate (`max_cer`, curate.asr.error_rate).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any, ClassVar

import pyarrow as pa

from curate import asr
from curate.mediaio import MediaError
from curate.records import PLACEHOLDER_RE, dumps_meta, record_id, reject
from curate.stages.base import Resources, Stage, model_name
from curate.store import MediaStore
from curate.tts import TTSError, draw_params, load_flac, make_backends, parse_voice, pick_voice, synthesize_to_store
from filters.text_units import UNIT_RE, is_cjk, unit_count

ORIGIN = "synthesized:audio_qa"
VISUAL_RE = re.compile(r"(?:(?:Image|Frame)-\d+:\s*)?<(?:image|video)>")
TAG_RE = re.compile(r"\b(?:Image|Frame)-\d+:\s*")
NO_CHINESE_VOICE = "no Chinese voice"


def drawn(seed: int, sample_id: str, fraction: float) -> bool:
    """Deterministic Bernoulli(fraction) draw per sample."""
    digest = hashlib.sha256(f"audio_qa\x00{seed}\x00{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def spoken_question(value: str) -> str:
    """The words of a human turn without media placeholders or their Image-N / Frame-N tags."""
    return " ".join(TAG_RE.sub(" ", PLACEHOLDER_RE.sub(" ", value)).split())


def audio_turn(value: str) -> str:
    """The human turn with its visual placeholders (and tags) kept and the text replaced by <audio>."""
    lines = [" ".join(VISUAL_RE.findall(line)) for line in value.split("\n")]
    return "\n".join([ln for ln in lines if ln] + ["<audio>"])


def split_caption(text: str) -> tuple[str, str]:
    """Baichuan-omni 1:3 split: (first quarter of the words, the remaining three quarters).
    Chinese has no spaces: a mostly-CJK caption is split after a quarter of its units (characters)."""
    if is_cjk(text):
        found = list(UNIT_RE.finditer(text))
        cut = found[max(1, round(len(found) / 4)) - 1].end()
        return text[:cut].strip(), text[cut:].lstrip("，、；：,;: ").strip()
    words = text.split()
    k = max(1, round(len(words) / 4))
    return " ".join(words[:k]), " ".join(words[k:])


def caption_length(text: str) -> int:
    """Words, or units (characters) of a mostly-CJK caption: what min_caption_words counts."""
    return unit_count(text) if is_cjk(text) else len(text.split())


def is_chinese(row: dict[str, Any], text: str) -> bool:
    """The filter's fastText language when it ran (zh, wuu, yue), else a mostly-CJK text."""
    lang = asr.base_language(row.get("language"))
    return lang in ("zh", "wuu", "yue") if lang else is_cjk(text)


def not_eligible_counts(table: pa.Table) -> dict[str, int]:
    """Samples passed through untouched per reason (column audio_qa_not_eligible)."""
    out: dict[str, int] = {}
    for reason in table.column("audio_qa_not_eligible").drop_null().to_pylist():
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def first_turns(turns: list[dict[str, str]]) -> tuple[int | None, int | None]:
    human = next((i for i, t in enumerate(turns) if t["from"] == "human"), None)
    gpt = next((i for i, t in enumerate(turns) if t["from"] == "gpt"), None)
    return human, gpt


def voice_summary(table: pa.Table) -> dict[str, dict[str, int]]:
    """Per voice setting, synthesized clips kept and rejected, from the stage's output rows
    (columns audio_qa_voice, reject_reason); the run report shows this distribution."""
    out: dict[str, dict[str, int]] = {}
    for r in table.select(["audio_qa_voice", "reject_reason"]).to_pylist():
        if r["audio_qa_voice"] is not None:
            counts = out.setdefault(r["audio_qa_voice"], {"kept": 0, "rejected": 0})
            counts["rejected" if r["reject_reason"] else "kept"] += 1
    return dict(sorted(out.items()))


class AudioQAStage(Stage):
    name: ClassVar[str] = "audio_qa"
    resources: ClassVar[Resources] = Resources(cpus=1, actors=1, batch_size=16)
    ctx_keys: ClassVar[tuple[str, ...]] = ("seed",)  # which samples are drawn, which voice speaks

    def default_resources(self) -> Resources:
        return self.resources.with_(gpus=1 if self.config.device == "cuda" else None)

    def model_label(self) -> str:
        return model_name(self.config.asr_model, "whisper-base")  # the read-back Whisper

    def threads(self) -> int:
        """CPU threads of the read-back Whisper: the CPUs the runner granted a worker
        (resources.cpus). Piper takes it too but keeps one thread (curate.tts.PiperTTS: its
        float sums, and so the clips, change with the thread count)."""
        return max(1, int(self.resolved_resources().cpus))

    def inputs(self) -> list[str]:
        return ["id", "media", "conversations", "meta"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"audio_qa_parent": pa.string(), "audio_qa_voice": pa.string(), "audio_qa_tts_params": pa.string(),
                "audio_qa_wer": pa.float64(), "audio_qa_heard": pa.string(), "audio_qa_not_eligible": pa.string()}

    def validate(self) -> None:
        """Before work starts: the TTS back-end works, every voice exists, the Whisper folder is there."""
        cfg = self.config
        if not cfg.voices:
            raise ValueError("stages.audio_qa.voices is empty; give at least one voice")
        backends = make_backends(cfg.tts, cfg.speed)
        for key, specs, default in (("voices", cfg.voices, cfg.tts), ("voices_zh", cfg.voices_zh, "piper")):
            for spec in specs:
                voice = parse_voice(spec, default)
                reason = backends[voice.backend].available(voice.name)
                if reason:
                    raise ValueError(f"stages.audio_qa.{key}: {reason}")
        asr.resolve_model_path(cfg.asr_model, default="base")

    def skip_reason(self) -> str | None:
        return "stages.audio_qa.fraction is 0: no sample is drawn" if self.config.fraction <= 0 else None

    def setup(self) -> None:
        cfg = self.config
        self.tts = make_backends(cfg.tts, cfg.speed, threads=self.threads())
        self._model: Any = None
        self.store = MediaStore(self.ctx.media_dir)

    @property
    def model(self) -> Any:
        """The read-back Whisper, loaded once per actor when the first sample is drawn."""
        if self._model is None:
            cfg = self.config
            self._model = asr.load_whisper(cfg.asr_model, cfg.device, self.threads(), default="base")
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value

    # ------------------------------------------------------------------ rows
    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            row.update({k: None for k in self.outputs()})
            out.append(row)
            plan = self.plan(row)
            if plan is not None:
                out.append(self.synthesize(row, *plan))
        return out

    def plan(self, row: dict[str, Any]) -> tuple[str, str | None] | None:
        """(text to speak, new answer or None) when the row is eligible and drawn, else None.
        A Chinese row without `voices_zh` is marked `audio_qa_not_eligible` (before the draw)."""
        cfg = self.config
        kinds = {m["kind"] for m in row.get("media") or []}
        if "audio" in kinds or not kinds & {"image", "video"} or not row.get("conversations"):
            return None
        human, gpt = first_turns(row["conversations"])
        if human is None or gpt is None:
            return None
        text = row["conversations"][gpt if cfg.variant == "caption" else human]["value"]
        if not cfg.voices_zh and is_chinese(row, spoken_question(text)):
            row["audio_qa_not_eligible"] = NO_CHINESE_VOICE
            return None
        if not drawn(self.ctx.seed, row["id"], cfg.fraction):
            return None
        if cfg.variant == "caption":
            if sum(t["from"] != "system" for t in row["conversations"]) != 2:
                return None  # one question and one caption only
            if caption_length(text) < cfg.min_caption_words:
                return None
            spoken, rest = split_caption(text)
            return (spoken, rest) if len(spoken) <= cfg.max_chars else None
        spoken = spoken_question(text)
        return (spoken, None) if spoken and len(spoken) <= cfg.max_chars else None

    def synthesize(self, parent: dict[str, Any], spoken: str, new_answer: str | None) -> dict[str, Any]:
        cfg = self.config
        row = copy.deepcopy(parent)
        chinese = is_chinese(parent, spoken)
        voices, backend = (cfg.voices_zh, "piper") if chinese else (cfg.voices, cfg.tts)
        voice = parse_voice(pick_voice(voices, self.ctx.seed, parent["id"]), backend)
        params = draw_params(self.ctx.seed, parent["id"], voice, cfg.rate, cfg.pitch, cfg.noise_scale, cfg.noise_w)
        meta = json.loads(parent.get("meta") or "{}") | {"audio_qa_parent": parent["id"], "spoken_text": spoken,
                                                         "voice": str(voice), "tts_params": params.as_dict()}
        row.update(id=record_id(parent["id"], "audio_qa"), orig_id=f"{parent.get('orig_id') or parent['id']}#audio_qa",
                   origin=ORIGIN, modality="audio_qa", meta=dumps_meta(meta), audio_qa_parent=parent["id"],
                   audio_qa_voice=str(voice), audio_qa_tts_params=json.dumps(params.as_dict(), sort_keys=True))
        try:
            item = synthesize_to_store(self.tts, spoken, voice, self.store, params)
            heard = asr.transcribe(self.model, load_flac(item["path"]),  # the stored file, read in-process
                                   language="zh" if chinese else None).text
        except (TTSError, MediaError, OSError) as e:
            return reject(row, self.name, "tts_failed", f"voice {voice}: {e}")
        row["audio_qa_heard"] = heard
        # the read-back error: WER, or CER for Chinese (the column keeps its name)
        row["audio_qa_wer"] = asr.error_rate(spoken, heard, "zh" if chinese else "en")
        name, limit = ("CER", cfg.max_cer) if chinese else ("WER", cfg.max_wer)
        if row["audio_qa_wer"] > limit:
            return reject(row, self.name, "tts_asr_mismatch",
                          f"{name} {row['audio_qa_wer']:.3f} > max_{name.lower()} {limit} (voice {voice}): "
                          f"said {spoken!r}, heard {heard!r}")
        self.rewrite(row, item, new_answer)
        return row

    def finish(self, job: Any) -> dict[str, Any]:
        """The marker counts the samples passed through as not eligible, per reason."""
        import pyarrow.dataset as pads

        table = pads.dataset(str(job.output_dir), format="parquet").to_table(columns=["audio_qa_not_eligible"])
        return {"not_eligible": not_eligible_counts(table)}

    @staticmethod
    def rewrite(row: dict[str, Any], item: dict[str, Any], new_answer: str | None) -> None:
        """Question text -> <audio> (placeholders kept); the audio item goes in media order."""
        turns = row["conversations"]
        human, gpt = first_turns(turns)
        index = sum(len(PLACEHOLDER_RE.findall(t["value"])) for t in turns[: human + 1])
        turns[human]["value"] = audio_turn(turns[human]["value"])
        if new_answer is not None:
            turns[gpt]["value"] = new_answer
        row["media"].insert(index, item)
