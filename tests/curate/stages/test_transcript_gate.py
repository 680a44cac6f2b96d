"""The transcript gate of the transcribe stage: a reference transcript far from what Whisper hears
is rejected (transcript_mismatch) or replaced, without an ensemble; Chinese is judged by CER."""

from __future__ import annotations

import json

import pytest

from curate import asr
from curate.recipe import TranscribeConfig
from curate.stages.base import RunContext
from curate.stages.transcribe import TranscribeStage, excerpt, mismatched
from curate.store import MediaStore
from curate.tts import make_backends, synthesize_to_store
from tests.test_audio import make_row
from tests.test_audio_languages import FakeWhisper, audio_row

OWN = "What does this video show?"
OTHER = "The weather in the mountains was cold and windy all week."


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return RunContext(out_dir=str(tmp_path_factory.mktemp("gate")), seed=3)


@pytest.fixture(scope="module")
def clip(ctx):
    """espeak-ng speech of OWN in the store."""
    return synthesize_to_store(make_backends(), OWN, "espeak:en", MediaStore(ctx.layout.media))["path"]


def stage_with(ctx, **cfg) -> TranscribeStage:
    stage = TranscribeStage(TranscribeConfig(enabled=True, **cfg), ctx)
    stage.validate()
    stage.setup()
    return stage


def test_default_gate_keeps_the_own_transcript_and_rejects_another_clips(ctx, clip):
    assert TranscribeConfig().max_ref_wer is not None and TranscribeConfig().on_mismatch == "reject"
    own, other = stage_with(ctx).process_rows([make_row(0, "audio", "<audio>\nTranscribe the speech.", OWN, clip),
                                               make_row(1, "audio", "<audio>\nTranscribe the speech.", OTHER,
                                                        clip)])
    assert own["reject_reason"] is None and own["asr_action"] == "checked" and own["asr_wer"] <= 0.1
    assert other["reject_reason"] == "transcript_mismatch" and other["reject_stage"] == "transcribe"
    assert other["asr_action"] == "mismatch" and other["asr_wer"] > TranscribeConfig().max_ref_wer
    detail = other["reject_detail"]
    assert detail.startswith("CER ") and "max_ref_wer" in detail
    assert repr(OTHER) in detail and f"heard {other['asr_text']!r}" in detail
    assert asr.wer(OWN, other["asr_text"]) <= 0.1  # what was heard is the clip's own sentence


def test_replace_writes_the_asr_text_and_null_turns_the_gate_off(ctx, clip):
    rows = [make_row(i, "audio", "<audio>\nTranscribe the speech.", OTHER, clip) for i in range(2)]
    replaced = stage_with(ctx, on_mismatch="replace").process_rows(rows[:1])[0]
    assert replaced["reject_reason"] is None and replaced["asr_action"] == "replaced"
    assert replaced["conversations"][1]["value"] == replaced["asr_text"] and asr.wer(OWN, replaced["asr_text"]) <= 0.1
    assert json.loads(replaced["meta"]) == {"transcript": replaced["asr_text"], "transcript_source": "asr_replaced"}
    off = stage_with(ctx, max_ref_wer=None).process_rows(rows[1:])[0]
    assert off["reject_reason"] is None and off["asr_action"] == "checked" and off["conversations"][1]["value"] == OTHER


def test_chinese_references_are_judged_by_character_error_rate(tmp_path, tone):
    heard = "今天下午三点在会议室讨论下个季度的计画"  # one character off the reference: CER 1/19
    stage = TranscribeStage(TranscribeConfig(enabled=True), RunContext(out_dir=str(tmp_path)))
    stage.setup()
    stage._models, stage._multilingual = [FakeWhisper("", multilingual=False)], FakeWhisper(heard)
    # by words the close reference would be one wrong "word" (WER 1.0) and rejected
    close, other = stage.process_rows([audio_row(0, "今天下午三点在会议室讨论下个季度的计划", tone),
                                       audio_row(1, "明天早上八点我们一起去公园跑步然后吃早饭", tone)])
    assert close["reject_reason"] is None and close["asr_wer"] == pytest.approx(1 / 19)
    assert other["reject_reason"] == "transcript_mismatch" and other["reject_detail"].startswith("CER ")
    assert "明天早上八点" in other["reject_detail"] and heard in other["reject_detail"]


def test_decision_and_excerpt():
    assert not mismatched(0.8, 0.8) and mismatched(0.81, 0.8)
    assert not mismatched(5.0, None) and not mismatched(None, 0.8)
    assert excerpt("a  b\n c") == "a b c"
    long = excerpt("x" * 200 + " middle " + "y" * 200, 100)
    assert long == "x" * 50 + " [...] " + "y" * 50


def test_the_gate_counts_characters_with_numbers_spelled_out_on_both_sides():
    assert asr.spell_numbers("the 50th of 19 and the 50s") == "the fiftieth of nineteen and the fiftys"
    assert asr.spell_numbers("press twenty first") == "press twenty first"  # not normalised: words stay
    # Whisper's normaliser writes numbers as digits; the gate spells them out again, so an
    # ordinal heard as its cardinal is two letters off, not a whole "word" of three characters
    assert asr.reference_error("sixth", "6.") == ("CER", pytest.approx(2 / 5))
    assert asr.reference_error("twenty-first", "21st") == ("CER", 0.0)
    assert asr.reference_error("It costs forty-two dollars.", "it costs $42") == ("CER", 0.0)
    assert asr.reference_error("Press 3 to re-record.", "press three to rerecord") == ("CER", 0.0)


def test_short_references_are_not_all_or_nothing():
    # by words a one-word prompt misheard by a letter or split in two scores 1 or 2 ...
    assert asr.wer("tick", "dick") == 1.0 and asr.wer("lowercase", "Lower case.") == 2.0
    # ... by characters (spaces left out) it is close, while another clip's word stays far
    assert asr.reference_error("tick", "dick") == ("CER", 0.25)
    assert asr.reference_error("lowercase", "Lower case.") == ("CER", 0.0)
    assert asr.reference_error("Call-Forward Unconditional.", "Call forward and conditional.")[1] < 0.1
    default = TranscribeConfig().max_ref_wer
    assert not mismatched(asr.reference_error("tick", "dick")[1], default)
    assert mismatched(asr.reference_error("Tuesday", "Monday.")[1], default)
    assert mismatched(asr.reference_error("seventieth", "Equals.")[1], default)
    assert mismatched(asr.reference_error("The conference is now unlocked.", "10th.")[1], default)
    assert asr.reference_error("", "") == ("CER", 0.0) and asr.reference_error("", "a")[1] == 1.0
    assert asr.reference_error("abc", "")[1] == 1.0


def test_other_spaced_languages_are_not_spelled_in_english():
    assert asr.reference_error("Bonjour 42", "bonjour 42", "fr") == ("CER", 0.0)
    assert asr.reference_error("quarante-deux", "42", "fr")[1] == 1.0  # no English num2words for French


def test_words_in_parentheses_are_compared_not_dropped():
    ref = "If the name is extremely long (longer than 255 characters), it may be cut."
    assert asr.normalize(ref) == "if the name is extremely long it may be cut"  # Whisper's normaliser drops them
    assert asr.reference_error(ref, "If the name is extremely long, longer than 255 characters, it may be cut.") \
        == ("CER", 0.0)
    # a reference whose words sit inside parentheses is still checked against what was heard
    assert mismatched(asr.reference_error("(The weather was cold all week.)", "Press one for sales.")[1],
                      TranscribeConfig().max_ref_wer)
