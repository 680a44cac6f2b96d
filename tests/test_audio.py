"""Audio: the bundled Piper voice and espeak-ng read back by Whisper (base for the gate, tiny.en for
transcribe), the WER gate catching wrong and truncated clips, voice variation, transcribe rejects, the
ASR ensemble vote, video soundtracks, and both stages end to end on Ray (demo corpus)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from curate import asr, tts
from curate.recipe import AudioQAConfig, TranscribeConfig, load_recipe
from curate.records import CORE_SCHEMA, empty_media
from curate.runner import Runner
from curate.stages.audio_qa import AudioQAStage, audio_turn, drawn, split_caption, spoken_question, voice_summary
from curate.stages.base import RunContext
from curate.stages.transcribe import TranscribeStage
from curate.store import MediaStore
from curate.tts import (
    EspeakTTS,
    PiperTTS,
    TTSError,
    VoiceParams,
    draw_params,
    make_backends,
    parse_voice,
    pick_voice,
    synthesize_to_store,
)
from tests.conftest import demo_overrides

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sft-stage3.yaml"
QUESTIONS = ["What does this video show?", "What is the first complete sentence on this page?",
             "Describe the picture in one sentence."]
SWAPPED = "The weather in the mountains was cold and windy all week."


def make_row(i: int, kind: str, first_turn: str, answer: str, path: str | None = None) -> dict:
    row = {k: None for k in CORE_SCHEMA.names}
    item = empty_media(kind, f"{kind}{i}") | {"path": path, "tiles": 1 if kind != "audio" else 0}
    row.update(id=f"row{i}", source="t", origin="manifest", manifest="m.jsonl", line=i, meta="{}",
               modality={"image": "image", "audio": "audio", "video": "video"}[kind], media=[item],
               conversations=[{"from": "human", "value": first_turn}, {"from": "gpt", "value": answer}])
    return row


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", *args], check=True)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio")
    return RunContext(out_dir=str(out), seed=3)


@pytest.fixture(scope="module")
def qa_stage(ctx):
    stage = AudioQAStage(AudioQAConfig(enabled=True, fraction=1.0, voices=["piper:joe"], max_wer=0.1), ctx)
    stage.validate()
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def speech(ctx):
    """Real espeak-ng clips in the store: {sentence: flac path}."""
    store, backends = MediaStore(ctx.layout.media), make_backends()
    return {q: synthesize_to_store(backends, q, "espeak:en", store)["path"] for q in [*QUESTIONS, SWAPPED]}


# ---------------------------------------------------------------------------- TTS + gate
def probe(path: str) -> dict:
    return json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", path],
                                     capture_output=True, check=True).stdout)["streams"][0]


@pytest.mark.parametrize("voice", ["espeak:en+f3", "piper:joe"])
def test_tts_writes_16k_mono_flac_with_duration(ctx, voice):
    item = synthesize_to_store(make_backends(), QUESTIONS[0], voice, MediaStore(ctx.layout.media))
    info = probe(item["path"])
    assert info["codec_name"] == "flac" and info["sample_rate"] == "16000" and info["channels"] == 1
    assert 0.8 < item["duration"] < 4 and item["mime"] == "audio/flac" and item["path"].endswith(".flac")
    assert abs(float(info["duration"]) - item["duration"]) < 0.05 and item["ref"] == f"tts:{voice}"
    assert -40 < asr.loudness_dbfs(asr.load_audio(item["path"])) < -3  # speech, neither silent nor clipped


def test_voice_specs_and_unknown_voices():
    assert parse_voice("piper:joe*0.86") == tts.Voice("piper", "joe", 0.86)
    assert parse_voice("en+f3") == tts.Voice("espeak", "en+f3") and str(parse_voice("joe", "piper")) == "piper:joe"
    with pytest.raises(ValueError, match="pitch"):
        parse_voice("piper:joe*low")
    assert EspeakTTS().unknown_voices(["en", "en-us", "en+f3", "en-gb-scotland+Storm", "xx-voice", "en+nope"]) \
        == ["xx-voice", "en+nope"]
    assert "no such .onnx" in PiperTTS().available("models/nope.onnx")
    with pytest.raises(TTSError, match="no such .onnx"):
        PiperTTS().synthesize("hello", "models/nope.onnx")


def noise_model(op: str = "RandomNormalLike", **attrs) -> bytes:
    """y = op(x) for a float [2, 3] input x, with the node's attributes `attrs`."""
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], name="draw", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_random_normal_like_nodes_read_their_noise_from_an_input(tmp_path):
    import onnxruntime as ort

    from curate.onnx_noise import NoiseInput, seed_noise_inputs

    model, found = seed_noise_inputs(noise_model(dtype=1))
    assert found == [NoiseInput("noise_0", "noise_0_shape", "draw")]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x, noise = np.zeros((2, 3), np.float32), np.arange(1, 7, dtype=np.float32)
    for fed, expected in ((noise, noise), (noise[:4], [1, 2, 3, 4, 1, 2]), (np.r_[noise, 9], noise)):
        y, shape = session.run(None, {"x": x, "noise_0": fed})  # a short array repeats, a long one is cut
        assert np.array_equal(y, np.reshape(expected, (2, 3))) and shape.tolist() == [2, 3]
    for y in (session.run(None, {"x": x, "noise_0": noise})[0] for _ in range(2)):
        assert np.array_equal(y, noise.reshape(2, 3))  # no generator inside: every run the same
    plain = noise_model("RandomUniformLike", dtype=1)
    assert seed_noise_inputs(plain) == (plain, [])  # nothing to feed: the model unchanged
    with pytest.raises(ValueError, match="'mean' set is not supported"):
        seed_noise_inputs(noise_model(mean=1.0))
    with pytest.raises(ValueError, match="not an ONNX model"):
        seed_noise_inputs(b"\xff" * 40)
    (tmp_path / "bad.onnx").write_bytes(b"\xff" * 40)
    (tmp_path / "bad.onnx.json").write_text("{}")
    with pytest.raises(TTSError, match="cannot feed its noise from outside: not an ONNX model"):
        PiperTTS().voice(str(tmp_path / "bad.onnx"))


def f0_hz(audio: np.ndarray, sr: int = tts.SAMPLE_RATE) -> float:
    """Median autocorrelation pitch (60-400 Hz) of the voiced 40 ms frames, hop 10 ms.

    Frames whose normalised autocorrelation peak is under 0.6 are unvoiced and skipped; a peak at
    two or three times the period (the usual octave error) is moved to the period itself.
    """
    n, hop, lo, hi = int(0.04 * sr), int(0.01 * sr), sr // 400, sr // 60
    loud = float(np.abs(audio).max()) / 4
    pitches = []
    for i in range(0, len(audio) - n, hop):
        frame = audio[i:i + n] - audio[i:i + n].mean()
        if np.abs(frame).max() < loud:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        ac = ac / (ac[0] + 1e-12) * n / (n - np.arange(n))  # normalised, unbiased
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] < 0.6:
            continue
        for div in (3, 2):
            cand = round(lag / div)
            if cand - 2 >= lo and ac[cand - 2:cand + 3].max() > 0.9 * ac[lag]:
                lag = cand - 2 + int(np.argmax(ac[cand - 2:cand + 3]))
                break
        pitches.append(sr / lag)
    return float(np.median(pitches))


def test_pitch_and_rate_variation_change_the_voice_as_asked():
    backends, joe = make_backends(), parse_voice("piper:joe")
    text = QUESTIONS[1]
    low, high = (tts.speak(backends, text, joe, VoiceParams(pitch=p, noise_w=0.3)) for p in (0.8, 1.25))
    assert f0_hz(high) > 1.3 * f0_hz(low)  # 1.25 / 0.8 = 1.56 apart
    # the back-end's rate compensates the resampling's tempo change: without it the clips' length
    # ratio would be 0.8 / 1.25 = 0.64; with Piper it reads 0.79-0.84 (12 runs: Piper's durations
    # are not exactly proportional to its length scale, and noise_w varies them per run)
    assert 0.72 < len(high) / len(low) < 1.2
    fast = tts.speak(backends, text, joe, VoiceParams(rate=1.4, noise_w=0.3))
    assert len(fast) < 0.85 * len(low)
    a = draw_params(5, "row1", joe, (0.9, 1.1), (0.9, 1.1), (0.5, 0.8), (0.6, 1.0))
    assert a == draw_params(5, "row1", joe, (0.9, 1.1), (0.9, 1.1), (0.5, 0.8), (0.6, 1.0))
    assert a != draw_params(5, "row2", joe, (0.9, 1.1), (0.9, 1.1), (0.5, 0.8), (0.6, 1.0))
    assert 0.9 <= a.rate <= 1.1 and 0.5 <= a.noise_scale <= 0.8
    deep = draw_params(5, "row1", parse_voice("espeak:en*0.5"), pitch=(0.9, 1.1), noise_scale=(0.5, 0.8))
    assert 0.45 <= deep.pitch <= 0.55 and deep.noise_scale is None


def test_voice_choice_is_deterministic_and_spread():
    voices = ["en", "en-us", "en+f3", "en+m3"]
    picks = [pick_voice(voices, 7, f"id{i}") for i in range(200)]
    assert picks == [pick_voice(voices, 7, f"id{i}") for i in range(200)]
    assert all(picks.count(v) > 25 for v in voices)
    assert picks != [pick_voice(voices, 8, f"id{i}") for i in range(200)]
    share = sum(drawn(1, f"id{i}", 0.2) for i in range(2000)) / 2000
    assert 0.17 < share < 0.23


def test_unknown_voice_fails_before_work(ctx):
    with pytest.raises(ValueError, match="no voice"):
        AudioQAStage(AudioQAConfig(enabled=True, fraction=0.5, voices=["en", "xx-none"]), ctx).validate()
    with pytest.raises(ValueError, match="no such .onnx"):
        AudioQAStage(AudioQAConfig(enabled=True, fraction=0.5, voices=["piper:models/x.onnx"]), ctx).validate()
    with pytest.raises(ValueError, match="low <= high"):
        AudioQAConfig(enabled=True, rate=(1.2, 0.8))


def test_round_trip_gate_keeps_good_questions_with_voice_and_params(qa_stage):
    rows = [make_row(i, "image", f"<image>\n{q}", "An answer.") for i, q in enumerate(QUESTIONS)]
    out = qa_stage.process_rows(rows)
    new = [r for r in out if r["origin"] == "synthesized:audio_qa"]
    assert len(out) == 6 and len(new) == 3
    kept = [r for r in new if r["reject_reason"] is None]
    assert len(kept) >= 2, [(r["audio_qa_heard"], r["audio_qa_wer"]) for r in new]
    for r in kept:
        assert r["audio_qa_wer"] <= 0.1 and r["modality"] == "audio_qa" and r["audio_qa_voice"] == "piper:joe"
        params = json.loads(r["audio_qa_tts_params"])
        assert 0.9 <= params["rate"] <= 1.1 and 0.95 <= params["pitch"] <= 1.05 and "noise_scale" in params
        assert json.loads(r["meta"])["tts_params"] == params
        assert r["conversations"][0]["value"] == "<image>\n<audio>" and r["conversations"][1]["value"] == "An answer."
        assert [m["kind"] for m in r["media"]] == ["image", "audio"] and r["media"][1]["duration"] > 0.5
        assert r["id"] != r["audio_qa_parent"] and json.loads(r["meta"])["spoken_text"] in QUESTIONS
    parents = [r for r in out if r["origin"] == "manifest"]
    assert [p["conversations"][0]["value"] for p in parents] == [f"<image>\n{q}" for q in QUESTIONS]


class SwappedTTS(PiperTTS):  # text A is asked for, text B is spoken
    def synthesize(self, text, voice, params=VoiceParams()):
        return super().synthesize(SWAPPED, voice, params)


class TruncatedTTS(PiperTTS):  # the clip stops after its first half
    def synthesize(self, text, voice, params=VoiceParams()):
        audio, rate = super().synthesize(text, voice, params)
        return audio[: len(audio) // 2], rate


@pytest.mark.parametrize("broken", [SwappedTTS, TruncatedTTS])
def test_gate_rejects_a_wrong_or_truncated_clip(qa_stage, broken):
    good_tts, qa_stage.tts = qa_stage.tts, {**qa_stage.tts, "piper": broken()}
    try:
        bad = qa_stage.process_rows([make_row(9, "image", f"<image>\n{QUESTIONS[1]}", "An answer.")])[1]
    finally:
        qa_stage.tts = good_tts
    assert bad["reject_reason"] == "tts_asr_mismatch" and bad["origin"] == "synthesized:audio_qa", bad["audio_qa_heard"]
    assert bad["audio_qa_wer"] > 0.25 and "WER" in bad["reject_detail"]


def test_voice_summary_counts_kept_and_rejected_per_voice():
    table = pa.table({"audio_qa_voice": [None, "piper:joe", "piper:joe", "piper:joe*0.86"],
                      "reject_reason": [None, None, "tts_asr_mismatch", None]})
    assert voice_summary(table) == {"piper:joe": {"kept": 1, "rejected": 1},
                                    "piper:joe*0.86": {"kept": 1, "rejected": 0}}


def test_question_and_caption_rewriting():
    q = "Image-1: <image>\nImage-2: <image>\nWhich chart has the largest maximum value?"
    assert spoken_question(q) == "Which chart has the largest maximum value?"
    assert audio_turn(q) == "Image-1: <image>\nImage-2: <image>\n<audio>"
    assert audio_turn("<video>\nWhat happens?") == "<video>\n<audio>"
    head, rest = split_caption("one two three four five six seven eight")
    assert head == "one two" and rest == "three four five six seven eight"


def test_caption_variant_speaks_a_quarter_and_targets_the_rest(ctx, qa_stage):
    cfg = AudioQAConfig(enabled=True, fraction=1.0, voices=["piper:joe"], variant="caption", max_wer=1.0)
    stage = AudioQAStage(cfg, ctx)
    stage.tts, stage.model, stage.store = qa_stage.tts, qa_stage.model, qa_stage.store
    caption = "A red car is parked in front of a small house with a green door and two windows."
    new = stage.process_rows([make_row(1, "image", "<image>\nDescribe the image.", caption)])[1]
    assert new["reject_reason"] is None and json.loads(new["meta"])["spoken_text"] == "A red car is"
    assert new["conversations"][1]["value"] == caption.split(" ", 4)[4]
    assert new["conversations"][0]["value"] == "<image>\n<audio>"


# ---------------------------------------------------------------------------- transcribe
@pytest.fixture(scope="module")
def bad_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    (d / "broken.flac").write_bytes(b"fLaC not really a flac file" * 10)
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "2", str(d / "silent.flac"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000", "-t", "6", str(d / "long.flac"))
    return d


def test_transcribe_fills_checks_and_rejects_bad_audio(ctx, speech, bad_clips):
    stage = TranscribeStage(TranscribeConfig(enabled=True, max_seconds=5.0), ctx)
    stage.validate()
    stage.setup()
    q = QUESTIONS[0]
    rows = [make_row(0, "audio", "<audio>\nTranscribe the speech.", "", speech[q]),
            make_row(1, "audio", "<audio>\nTranscribe the speech.", q, speech[q]),
            make_row(2, "audio", "<audio>\nTranscribe the speech.", "x", str(bad_clips / "broken.flac")),
            make_row(3, "audio", "<audio>\nTranscribe the speech.", "x", str(bad_clips / "silent.flac")),
            make_row(4, "audio", "<audio>\nTranscribe the speech.", "x", str(bad_clips / "long.flac")),
            make_row(5, "image", "<image>\nWhat is it?", "A chart.")]
    out = stage.process_rows(rows)
    filled, checked = out[0], out[1]
    assert filled["reject_reason"] is None and filled["asr_action"] == "filled"
    assert asr.wer(q, filled["conversations"][1]["value"]) <= 0.1
    assert json.loads(filled["meta"])["transcript_source"] == "asr"
    assert checked["asr_action"] == "checked" and checked["asr_wer"] <= 0.1
    assert checked["conversations"][1]["value"] == q
    seg = checked["asr_segments"][0]
    assert seg["item"] == 0 and 0 <= seg["start"] < seg["end"] <= 3.0 and seg["text"]
    assert 0 < checked["asr_confidence"] <= 1 and checked["asr_no_speech_prob"] < 0.5
    assert [r["reject_reason"] for r in out[2:5]] == ["broken_audio", "silent_audio", "audio_too_long"]
    assert "max_seconds" in out[4]["reject_detail"]
    assert out[5]["reject_reason"] is None and out[5]["asr_text"] is None


def test_ensemble_corrects_a_wrong_reference_by_majority(ctx, speech):
    tiny = str(asr.resolve_model_path(None))
    stage = TranscribeStage(TranscribeConfig(enabled=True, ensemble=[tiny]), ctx)
    stage.setup()
    q = QUESTIONS[1]
    wrong, right = (make_row(i, "audio", "<audio>\nTranscribe.", text, speech[q]) for i, text in
                    enumerate([SWAPPED, q]))
    out = stage.process_rows([wrong, right])
    assert out[0]["asr_action"] == "correct" and asr.wer(q, out[0]["conversations"][1]["value"]) <= 0.1
    assert json.loads(out[0]["meta"])["transcript_source"] == "asr_majority"
    assert out[1]["asr_action"] == "keep" and out[1]["conversations"][1]["value"] == q


def test_vote_keep_correct_drop():
    assert asr.vote(["the cat sat down", "the cat sat down", "the cat sat down"], 0.1, 0.3).action == "keep"
    v = asr.vote(["a dog ran off", "the cat sat down", "the cat sat down"], 0.1, 0.3)
    assert v.action == "correct" and v.choice == 1
    assert asr.vote(["a dog ran off", "the cat sat down"], 0.1, 0.3).action == "drop"
    assert asr.wer("It costs forty-two dollars.", "it costs $42") == 0.0


def test_long_audio_windows_cut_at_silence():
    sr = asr.SAMPLE_RATE
    tone = np.sin(np.arange(sr * 4) * 0.1).astype(np.float32)
    gap = np.zeros(sr // 2, np.float32)
    audio = np.concatenate([tone, tone, tone, gap, tone, tone, tone])  # 24.5 s, silence at 12-12.5 s
    bounds = asr.window_bounds(audio, window_s=14.0)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio) and len(bounds) == 2
    assert 12 * sr <= bounds[0][1] <= 12.5 * sr and bounds[0][1] == bounds[1][0]


def test_windows_and_vad_keep_timestamps_on_the_whole_clip(qa_stage, speech):
    sr = asr.SAMPLE_RATE
    a, b = (asr.load_audio(speech[q]) for q in QUESTIONS[:2])
    gap = np.zeros(sr * 2, np.float32)
    clip = np.concatenate([gap, a, gap, b])
    whole = asr.transcribe(qa_stage.model, clip, window_s=len(gap) / sr + len(a) / sr + 1.5)
    assert asr.wer(" ".join(QUESTIONS[:2]), whole.text) <= 0.2, whole.text
    second = next(s for s in whole.segments if "sentence" in s["text"].lower())
    assert second["start"] >= (len(gap) + len(a)) / sr + 1.0  # after the first sentence: window offset added
    vad = asr.transcribe(qa_stage.model, clip, vad=True)
    assert asr.wer(" ".join(QUESTIONS[:2]), vad.text) <= 0.2 and vad.segments[0]["start"] >= 1.5


def test_video_soundtrack_is_attached_and_transcribed(ctx, speech, tmp_path):
    video = tmp_path / "talk.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-i", speech[QUESTIONS[0]], "-shortest",
           "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(video))
    stage = TranscribeStage(TranscribeConfig(enabled=True, video_audio=True), ctx)
    stage.setup()
    row = stage.process_rows([make_row(0, "video", "<video>\nWhat is said?", "A question.", str(video))])[0]
    assert row["reject_reason"] is None and [m["kind"] for m in row["media"]] == ["video", "audio"]
    assert row["conversations"][0]["value"] == "<video><audio>\nWhat is said?"
    assert row["media"][1]["duration"] > 1 and asr.wer(QUESTIONS[0], row["asr_text"]) <= 0.25


# ---------------------------------------------------------------------------- end to end on Ray
@pytest.mark.pipeline
def test_runner_transcribes_and_synthesizes_audio_qa_keeping_the_invariant(ray_session, demo_small, tmp_path):
    sets = demo_overrides(demo_small, "stages.transcribe.enabled=true", "stages.audio_qa.enabled=true",
                          "stages.audio_qa.fraction=0.2", "stages.audio_qa.voices=[piper:joe, espeak:de]")
    stats = Runner(load_recipe(RECIPE, sets), tmp_path).run()
    assert stats["invariant_ok"] and stats["synthesized"] >= 3
    assert stats["modalities"].get("audio_qa", 0) >= 1 and stats["rejected"].get("tts_asr_mismatch", 0) >= 1
    work = pads.dataset(str(next((tmp_path / "work").glob("*-transcribe"))), format="parquet").to_table()
    audio = [r for r in work.to_pylist() if r["modality"] == "audio" and r["reject_reason"] is None]
    assert audio and all(r["asr_action"] == "checked" and r["asr_segments"] for r in audio)
    assert np.median([r["asr_wer"] for r in audio]) <= 0.35
    qa_table = pads.dataset(str(next((tmp_path / "work").glob("*-audio_qa"))), format="parquet").to_table()
    qa = qa_table.to_pylist()
    kept = [r for r in qa if r["modality"] == "audio_qa" and r["reject_reason"] is None]
    summary = voice_summary(qa_table)
    assert sum(v["kept"] for v in summary.values()) == len(kept) and summary["espeak:de"]["rejected"] >= 1
    assert all(json.loads(r["audio_qa_tts_params"])["rate"] > 0 for r in kept)
    assert all(r["audio_qa_wer"] <= 0.1 and r["audio_qa_voice"] in ("piper:joe", "espeak:de") for r in kept)
    tok = pads.dataset(str(next((tmp_path / "work").glob("*-tokenize"))), format="parquet").to_table().to_pylist()
    assert all(r["n_audio_tokens"] > 0 for r in tok if r["modality"] == "audio_qa")
