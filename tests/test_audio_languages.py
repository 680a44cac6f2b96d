"""Chinese beside English in the audio stages, without running Whisper or a TTS voice: the error
rate each gate uses (CER for Chinese, WER for English), which Whisper decodes a clip, and
audio-QA's Chinese samples (not eligible without a Chinese voice, CER-gated with one)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import asr
from curate.recipe import AudioQAConfig, TranscribeConfig
from curate.records import CORE_SCHEMA, empty_media
from curate.stages.audio_qa import NO_CHINESE_VOICE, AudioQAStage, caption_length, not_eligible_counts, split_caption
from curate.stages.base import Job, Resources, RunContext
from curate.stages.transcribe import TranscribeStage
from curate.stats import format_stats, not_eligible_of

ZH_Q = "图中最高的柱子代表哪个月份？"


# ---------------------------------------------------------------------------- error rates
def test_chinese_is_scored_by_characters_english_by_words():
    ref = "图中最高的柱子代表哪个月份"
    one_char_wrong = "图中最高的柱子代表哪个月分"
    assert asr.error_rate(ref, one_char_wrong, "zh") == pytest.approx(1 / 13)
    # as words, a Chinese sentence without spaces is one word: any slip would cost 100%
    assert asr.wer(ref, one_char_wrong, "zh") == 1.0
    # the script decides even when the language code says English (Whisper's detected code can be wrong)
    assert asr.error_rate(ref, one_char_wrong, "en") == pytest.approx(1 / 13)
    # punctuation of both scripts and spaces do not count
    assert asr.error_rate("图中最高的柱子，代表哪个月份？", "图中 最高的柱子代表哪个月份。", "zh") == 0.0


def test_mixed_chinese_english_counts_a_latin_word_as_one_unit():
    ref = "我们把 batch size 设为 32"  # units: 我 们 把 batch size 设 为 32
    assert asr.error_rate(ref, "我们把 batch size 设为 64", "zh") == pytest.approx(1 / 8)
    assert asr.error_rate(ref, "我们把 bath size 设为 32") == pytest.approx(1 / 8)
    assert asr.error_name(ref) == "CER"


def test_english_error_rate_is_the_word_error_rate():
    pairs = [("It costs forty-two dollars.", "it costs $42"), ("What colour is the car?", "what color is a car"),
             ("the cat sat down", "the cat sat")]
    for ref, hyp in pairs:
        assert asr.error_rate(ref, hyp, "en") == asr.wer(ref, hyp, "en")
    assert asr.error_rate("the cat sat down", "the cat sat") == pytest.approx(0.25)
    assert asr.error_name("the cat sat down") == "WER"


def test_vote_on_chinese_transcripts_uses_character_error_rate():
    ref = "今天下午三点在会议室讨论下个季度的计划"
    heard = ["今天下午三点在会议室讨论下个季度的计划", "今天下午三点在会议室讨论下个季度的计画"]
    assert asr.vote([ref, *heard], 0.1, 0.25, "zh").action == "keep"  # one character in 19
    wrong = "明天上午十点去机场接客人"
    v = asr.vote([wrong, *heard], 0.1, 0.25, "zh")
    assert v.action == "correct" and v.choice == 1
    # by words each transcript would be one different word and nothing would agree; the script
    # decides, not the language code
    assert asr.pairwise_error([ref, *heard], "en").max() < 0.1
    assert asr.wer(heard[0], heard[1], "zh") == 1.0


# ---------------------------------------------------------------------------- routing
def test_route_sends_chinese_clips_to_the_multilingual_model():
    assert asr.route(None, "图中最高的柱子代表哪个月份？", main_multilingual=False) == ("multilingual", "zh")
    assert asr.route("zh", None, main_multilingual=False) == ("multilingual", "zh")
    assert asr.route("zh_Hans", "", main_multilingual=False) == ("multilingual", "zh")
    assert asr.route(None, "日本語のテキストです", main_multilingual=False) == ("multilingual", "ja")
    assert asr.route(None, "InternVL 2.5 在多个基准上表现优秀", main_multilingual=False) == ("multilingual", "zh")
    # English stays on the English model, as before
    assert asr.route(None, "What does this video show?", main_multilingual=False) == ("main", None)
    assert asr.route("en", None, main_multilingual=False) == ("main", "en")
    # nothing known: the multilingual model detects the language first
    assert asr.route(None, None, main_multilingual=False) == ("detect", None)
    assert asr.after_detection("zh", 0.9) == ("multilingual", "zh")
    assert asr.after_detection("en", 0.9) == ("main", "en") == asr.after_detection("zh", 0.3)
    # a multilingual main model decodes everything; a Chinese reference still fixes the language
    assert asr.route(None, ZH_Q, main_multilingual=True) == ("main", "zh")
    assert asr.route(None, "What is it?", main_multilingual=True) == ("main", None)


class FakeWhisper:
    """Records what it was asked; hears `text` in every clip."""

    def __init__(self, text, multilingual=True, detected=("en", 1.0)):
        self.text, self.detected, self.calls = text, detected, []
        self.model = SimpleNamespace(is_multilingual=multilingual)

    def transcribe(self, audio, language=None, vad_filter=False, **kwargs):
        self.calls.append({"language": language, **kwargs})
        seg = SimpleNamespace(start=0.0, end=1.0, text=self.text, avg_logprob=-0.1, no_speech_prob=0.01)
        return [seg], SimpleNamespace(language=language or self.detected[0], language_probability=1.0)

    def detect_language(self, audio):
        self.calls.append({"detect": True})
        return self.detected[0], self.detected[1], []


def audio_row(i, answer, path, meta=None):
    row = {k: None for k in CORE_SCHEMA.names}
    row.update(id=f"a{i}", source="t", origin="manifest", modality="audio", meta=json.dumps(meta or {}),
               media=[empty_media("audio", f"a{i}.flac") | {"path": path}],
               conversations=[{"from": "human", "value": "<audio>\nTranscribe the speech."},
                              {"from": "gpt", "value": answer}])
    return row


def transcribe_stage(tmp_path, main, multilingual, ensemble=()):
    stage = TranscribeStage(TranscribeConfig(enabled=True), RunContext(out_dir=str(tmp_path)))
    stage.setup()
    stage._models, stage._multilingual = [main, *ensemble], multilingual
    return stage


def test_transcribe_routes_a_chinese_sample_to_the_multilingual_model(tmp_path, tone):
    ref = "今天下午三点在会议室讨论下个季度的计划"
    main = FakeWhisper("today at three", multilingual=False)
    multi = FakeWhisper("今天下午三点在会议室讨论下个季度的计画")
    english_ensemble = FakeWhisper("today at three", multilingual=False)
    stage = transcribe_stage(tmp_path, main, multi, [english_ensemble])
    row = stage.process_rows([audio_row(0, ref, tone)])[0]
    assert main.calls == [] and english_ensemble.calls == []  # an English-only model never hears Chinese
    assert multi.calls[0]["language"] == "zh" and multi.calls[0]["initial_prompt"] == asr.ZH_PROMPT
    assert row["asr_language"] == "zh" and row["asr_wer"] == pytest.approx(1 / 19)  # CER, not WER (1.0)


def test_transcribe_uses_meta_language_and_detection(tmp_path, tone):
    main = FakeWhisper("what does this video show", multilingual=False)
    multi = FakeWhisper("这个视频展示了什么", detected=("zh", 0.95))
    stage = transcribe_stage(tmp_path, main, multi)
    # no reference transcript (empty answer) and meta.language zh: multilingual, filled in Chinese
    filled = stage.process_rows([audio_row(1, "", tone, meta={"language": "zh"})])[0]
    assert filled["asr_action"] == "filled" and filled["conversations"][1]["value"] == "这个视频展示了什么"
    assert {"detect": True} not in multi.calls and main.calls == []
    # nothing known: the multilingual model detects Chinese, then decodes it
    multi.calls.clear()
    stage.process_rows([audio_row(2, "", tone)])
    assert multi.calls[0] == {"detect": True} and multi.calls[1]["language"] == "zh" and main.calls == []
    # detected English: back to the English model
    english = FakeWhisper("", detected=("en", 0.99))
    stage = transcribe_stage(tmp_path, main, english)
    stage.process_rows([audio_row(3, "", tone)])
    assert english.calls == [{"detect": True}] and main.calls[-1]["language"] == "en"


def test_transcribe_keeps_english_samples_on_the_english_model(tmp_path, tone):
    main = FakeWhisper("what does this video show", multilingual=False)
    multi = FakeWhisper("这个视频展示了什么")
    stage = transcribe_stage(tmp_path, main, multi)
    row = stage.process_rows([audio_row(4, "What does this video show?", tone)])[0]
    assert multi.calls == [] and main.calls[0]["language"] == "en" and "initial_prompt" not in main.calls[0]
    assert row["asr_wer"] == 0.0 and row["asr_action"] == "checked"


# ---------------------------------------------------------------------------- audio-QA
def image_row(i, question, answer="一月。", language=None):
    row = {k: None for k in CORE_SCHEMA.names}
    row.update(id=f"img{i}", source="t", origin="manifest", modality="image", meta="{}", language=language,
               media=[empty_media("image", f"i{i}.jpg") | {"path": None, "tiles": 1}],
               conversations=[{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}])
    return row


class NoTTS:
    name = "piper"

    def synthesize(self, text, voice, params):
        raise AssertionError(f"nothing should be spoken, got {text!r}")


class ToneTTS:
    name = "piper"

    def __init__(self):
        self.voices = []

    def synthesize(self, text, voice, params):
        self.voices.append(voice)
        return np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3, 16000


def qa_stage(tmp_path, **cfg):
    stage = AudioQAStage(AudioQAConfig(enabled=True, fraction=1.0, **cfg), RunContext(out_dir=str(tmp_path), seed=1))
    stage.setup()
    return stage


def test_chinese_samples_are_not_eligible_without_a_chinese_voice_and_are_counted(tmp_path):
    stage = qa_stage(tmp_path)
    assert stage.config.voices_zh == []  # the default
    rows = [image_row(0, ZH_Q), image_row(1, "这张 chart 里 July 的数值是多少？"),
            image_row(2, "Which month is the tallest bar?", language="zh"),  # LID says Chinese
            image_row(3, ZH_Q, language="en")]  # LID says English: eligible (the English voices)
    stage.model = FakeWhisper("")
    stage.tts = {"piper": NoTTS(), "espeak": NoTTS()}
    out = stage.process_rows(rows[:3])
    assert len(out) == 3  # nothing synthesized: the rows pass through untouched
    assert [r["audio_qa_not_eligible"] for r in out] == [NO_CHINESE_VOICE] * 3
    assert out[0]["conversations"] == rows[0]["conversations"] and out[0]["reject_reason"] is None
    stage.tts = {"piper": ToneTTS(), "espeak": NoTTS()}
    english = stage.process_rows([rows[3]])
    assert english[0]["audio_qa_not_eligible"] is None and len(english) == 2
    # the stage's marker and the run's stats count them
    table = pa.Table.from_pylist(out + english, schema=stage.output_schema(CORE_SCHEMA))
    (tmp_path / "out").mkdir()
    pq.write_table(table, tmp_path / "out" / "part-0.parquet")
    info = stage.finish(Job(None, tmp_path / "out", Resources()))
    assert info == {"not_eligible": {NO_CHINESE_VOICE: 3}} == {"not_eligible": not_eligible_counts(table)}
    assert not_eligible_of({"audio_qa": info, "filter": {"rows": 3}}) == {"audio_qa": {NO_CHINESE_VOICE: 3}}


def test_not_eligible_shows_in_the_stats_table():
    stats = {"samples_in": 4, "synthesized": 1, "samples_out": 5, "repeats": 0, "rejected": {},
             "invariant_ok": True, "shards": 1, "sequences": 1, "token_fill": 0.5, "tile_fill": 0.5,
             "budgets": {"max_tokens": 10, "max_tiles": 2}, "modalities": {"image": 4}, "stage_seconds": {},
             "not_eligible": {"audio_qa": {NO_CHINESE_VOICE: 3}}}
    assert "not eligible    audio_qa: no Chinese voice 3 (passed through)" in format_stats(stats)


def test_with_a_chinese_voice_chinese_questions_use_it_and_the_cer_gate(tmp_path):
    stage = qa_stage(tmp_path, voices_zh=["piper:voices/zh_CN-test.onnx"], max_cer=0.1)
    tts = ToneTTS()
    stage.tts = {"piper": tts, "espeak": NoTTS()}
    q = "图中最高的柱子代表哪个月份"
    stage.model = FakeWhisper(q[:-1] + "分")  # one character in 13 misheard: CER 0.077
    kept = stage.process_rows([image_row(0, q + "？")])[1]
    assert tts.voices == ["voices/zh_CN-test.onnx"] and kept["audio_qa_voice"] == "piper:voices/zh_CN-test.onnx"
    assert kept["reject_reason"] is None and kept["audio_qa_wer"] == pytest.approx(1 / 13)
    assert kept["conversations"][0]["value"] == "<image>\n<audio>"
    assert stage.model.calls[-1]["language"] == "zh"
    stage.model = FakeWhisper("图中最低的柱子是几月")
    bad = stage.process_rows([image_row(1, q + "？")])[1]
    assert bad["reject_reason"] == "tts_asr_mismatch" and "CER" in bad["reject_detail"]
    assert "max_cer 0.1" in bad["reject_detail"]


def test_chinese_captions_split_by_characters():
    caption = "一只橘色的猫趴在窗台上晒太阳，窗外是一片开满黄花的油菜田。"
    head, rest = split_caption(caption)
    assert head + rest in (caption, caption.replace("，", "", 1))
    assert 5 <= len(head) <= 8 and caption_length(caption) == 27
    assert split_caption("one two three four five six seven eight") == ("one two", "three four five six seven eight")
