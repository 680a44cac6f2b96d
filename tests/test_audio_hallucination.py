"""Whisper (tiny.en, the transcribe default) over clips without speech: what it writes is rejected
`asr_hallucination` with its evidence, and real speech (espeak-ng) passes."""

from __future__ import annotations

import subprocess

import pytest

from curate.recipe import TranscribeConfig
from curate.stages.base import RunContext
from curate.stages.transcribe import TranscribeStage
from curate.store import MediaStore
from curate.tts import make_backends, synthesize_to_store
from tests.test_audio import make_row

SPEECH = "The weather in the mountains was cold and windy all week."


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", *args], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("nonspeech")
    # 30 s of digital silence, and of faint white noise (-45 dBFS: above the silence cut); a fixed seed
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "30", str(d / "silence.flac"))
    ffmpeg("-f", "lavfi", "-i", "anoisesrc=r=16000:c=white:a=0.01:seed=1", "-t", "30", str(d / "faint.flac"))
    return d


def test_whisper_on_silence_and_noise_is_rejected_speech_is_not(tmp_path, clips):
    ctx = RunContext(out_dir=str(tmp_path), seed=3)
    speech = synthesize_to_store(make_backends(), SPEECH, "espeak:en", MediaStore(ctx.layout.media))["path"]
    paths = [str(clips / "silence.flac"), str(clips / "faint.flac"), speech]
    # silence_dbfs off, so the silent clip reaches Whisper instead of being rejected silent_audio
    stage = TranscribeStage(TranscribeConfig(enabled=True, silence_dbfs=-200.0), ctx)
    stage.setup()
    rows = stage.process_rows([make_row(i, "audio", "<audio>\nTranscribe the speech.", "", p)
                               for i, p in enumerate(paths)])
    silence, faint, spoken = rows
    # tiny.en writes "you" over 30 s of silence and ". . . ." over faint noise
    assert silence["reject_reason"] == "asr_hallucination" and "outro: 'you'" in silence["reject_detail"]
    assert faint["reject_reason"] == "asr_hallucination" and "no words" in faint["reject_detail"]
    assert spoken["reject_reason"] is None and spoken["asr_action"] == "filled"
    # the check can be turned off: the same clips then pass with Whisper's text
    off = TranscribeStage(TranscribeConfig(enabled=True, silence_dbfs=-200.0, hallucination_check=False), ctx)
    off.setup()
    kept = off.process_rows([make_row(0, "audio", "<audio>\nTranscribe the speech.", "", paths[0])])[0]
    assert kept["reject_reason"] is None and kept["asr_text"].strip().lower().startswith("you")
