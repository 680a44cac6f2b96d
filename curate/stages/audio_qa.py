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
words; the first quarter is spoken, the remaining three quarters become the answer.
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
from curate.stages.base import Resources, Stage
from curate.store import MediaStore
from curate.tts import (TTSError, draw_params, load_flac, make_backends, parse_voice, pick_voice,
                        synthesize_to_store)

ORIGIN = "synthesized:audio_qa"
VISUAL_RE = re.compile(r"(?:(?:Image|Frame)-\d+:\s*)?<(?:image|video)>")
TAG_RE = re.compile(r"\b(?:Image|Frame)-\d+:\s*")


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
    """Baichuan-omni 1:3 split: (first quarter of the words, the remaining three quarters)."""
    words = text.split()
    k = max(1, round(len(words) / 4))
    return " ".join(words[:k]), " ".join(words[k:])


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
    uses_seed: ClassVar[bool] = True  # which samples are drawn, which voice speaks

    def default_resources(self) -> Resources:
        return self.resources.with_(gpus=1 if self.config.device == "cuda" else None)

    def inputs(self) -> list[str]:
        return ["id", "media", "conversations", "meta"]

    def outputs(self) -> dict[str, pa.DataType]:
        return {"audio_qa_parent": pa.string(), "audio_qa_voice": pa.string(), "audio_qa_tts_params": pa.string(),
                "audio_qa_wer": pa.float64(), "audio_qa_heard": pa.string()}

    def validate(self) -> None:
        """Before work starts: the TTS back-end works, every voice exists, the Whisper folder is there."""
        cfg = self.config
        if not cfg.voices:
            raise ValueError("stages.audio_qa.voices is empty; give at least one voice")
        backends = make_backends(cfg.tts, cfg.speed)
        for spec in cfg.voices:
            voice = parse_voice(spec, cfg.tts)
            reason = backends[voice.backend].available(voice.name)
            if reason:
                raise ValueError(f"stages.audio_qa.voices: {reason}")
        asr.resolve_model_path(cfg.asr_model, default="base")

    def skip_reason(self) -> str | None:
        return "stages.audio_qa.fraction is 0: no sample is drawn" if self.config.fraction <= 0 else None

    def setup(self) -> None:
        cfg = self.config
        self.tts = make_backends(cfg.tts, cfg.speed)
        self._model: Any = None
        self.store = MediaStore(self.ctx.media_dir)

    @property
    def model(self) -> Any:
        """The read-back Whisper, loaded once per actor when the first sample is drawn."""
        if self._model is None:
            cfg = self.config
            self._model = asr.load_whisper(cfg.asr_model, cfg.device, max(1, int(self.resources.cpus)),
                                           default="base")
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
        """(text to speak, new answer or None) when the row is eligible and drawn, else None."""
        cfg = self.config
        kinds = {m["kind"] for m in row.get("media") or []}
        if "audio" in kinds or not kinds & {"image", "video"} or not row.get("conversations"):
            return None
        if not drawn(self.ctx.seed, row["id"], cfg.fraction):
            return None
        human, gpt = first_turns(row["conversations"])
        if human is None or gpt is None:
            return None
        if cfg.variant == "caption":
            if sum(t["from"] != "system" for t in row["conversations"]) != 2:
                return None  # one question and one caption only
            answer = row["conversations"][gpt]["value"]
            if len(answer.split()) < cfg.min_caption_words:
                return None
            spoken, rest = split_caption(answer)
            return (spoken, rest) if len(spoken) <= cfg.max_chars else None
        spoken = spoken_question(row["conversations"][human]["value"])
        return (spoken, None) if spoken and len(spoken) <= cfg.max_chars else None

    def synthesize(self, parent: dict[str, Any], spoken: str, new_answer: str | None) -> dict[str, Any]:
        cfg = self.config
        row = copy.deepcopy(parent)
        voice = parse_voice(pick_voice(cfg.voices, self.ctx.seed, parent["id"]), cfg.tts)
        params = draw_params(self.ctx.seed, parent["id"], voice, cfg.rate, cfg.pitch, cfg.noise_scale, cfg.noise_w)
        meta = json.loads(parent.get("meta") or "{}") | {"audio_qa_parent": parent["id"], "spoken_text": spoken,
                                                         "voice": str(voice), "tts_params": params.as_dict()}
        row.update(id=record_id(parent["id"], "audio_qa"), orig_id=f"{parent.get('orig_id') or parent['id']}#audio_qa",
                   origin=ORIGIN, modality="audio_qa", meta=dumps_meta(meta), audio_qa_parent=parent["id"],
                   audio_qa_voice=str(voice), audio_qa_tts_params=json.dumps(params.as_dict(), sort_keys=True))
        try:
            item = synthesize_to_store(self.tts, spoken, voice, self.store, params)
            heard = asr.transcribe(self.model, load_flac(item["path"])).text  # the stored file, read in-process
        except (TTSError, MediaError, OSError) as e:
            return reject(row, self.name, "tts_failed", f"voice {voice}: {e}")
        row["audio_qa_heard"] = heard
        row["audio_qa_wer"] = asr.wer(spoken, heard)
        if row["audio_qa_wer"] > cfg.max_wer:
            return reject(row, self.name, "tts_asr_mismatch",
                          f"WER {row['audio_qa_wer']:.3f} > max_wer {cfg.max_wer} (voice {voice}): "
                          f"said {spoken!r}, heard {heard!r}")
        self.rewrite(row, item, new_answer)
        return row

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
