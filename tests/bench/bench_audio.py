"""Audio bench: TTS clips per second, Whisper tiny.en seconds of audio per second per core, WER per voice.

Every sentence is spoken by every voice (espeak-ng -> 16 kHz FLAC in a temporary store), then
transcribed back with the bundled tiny.en on one CPU thread (int8, greedy). Baselines measured
in the same run: raw espeak-ng WAV synthesis (no resampling, no FLAC) for TTS, and real time
(1 s of audio per second) for ASR. The WER table is what the audio_qa gate sees: the share of
clips at or under max_wer 0.1 is the share a voice keeps.

    python -m tests.bench audio            # BENCH_AUDIO_SENTENCES=12 for a quicker run
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from curate import asr
from curate.demo import prose_topics, sentences
from curate.store import MediaStore
from curate.tts import EspeakTTS, synthesize_to_store

VOICES = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en+f3", "en+m3"]
QUESTIONS = ["Which bar in the chart is the tallest, and what is its value?",
             "What is the first complete sentence on this page?", "What does this video show?",
             "Which chart has the largest maximum value?", "How many people are standing near the door?",
             "What colour is the car parked in front of the house?"]


def corpus(n: int) -> list[str]:
    docs = [s for _, body in prose_topics() for s in sentences(body) if len(s) <= 120]
    return (QUESTIONS + docs[::7])[:n]


def main() -> None:
    n = int(os.environ.get("BENCH_AUDIO_SENTENCES", "24"))
    texts = corpus(n)
    tts = EspeakTTS()
    store = MediaStore(tempfile.mkdtemp(prefix="bench-audio-"))

    t0 = time.perf_counter()
    for text in texts:
        tts.synthesize_wav(text, "en")
    raw_rate = len(texts) / (time.perf_counter() - t0)

    clips: list[tuple[str, str, str, float]] = []  # voice, text, path, seconds
    t0 = time.perf_counter()
    for voice in VOICES:
        for text in texts:
            item = synthesize_to_store(tts, text, voice, store)
            clips.append((voice, text, item["path"], item["duration"]))
    tts_rate = len(clips) / (time.perf_counter() - t0)

    model = asr.load_whisper(None, "cpu", cpu_threads=1)
    asr.normalize("warm up")  # the text normaliser import is not ASR time
    wers: dict[str, list[float]] = {v: [] for v in VOICES}
    audio_s = asr_s = 0.0
    for voice, text, path, seconds in clips:
        audio = asr.load_audio(path)
        t0 = time.perf_counter()
        heard = asr.transcribe(model, audio).text
        asr_s += time.perf_counter() - t0
        audio_s += seconds
        wers[voice].append(asr.wer(text, heard))
    asr_rate = audio_s / asr_s

    print(f"{len(texts)} sentences x {len(VOICES)} voices = {len(clips)} clips, {audio_s:.0f} s of speech")
    print(f"{'measure':<44}{'value':>10}{'baseline':>10}{'ratio':>8}")
    tts_label = "TTS clips/s (espeak-ng -> 16 kHz FLAC store)"
    print(f"{tts_label:<44}{tts_rate:>10.2f}{raw_rate:>10.2f}{tts_rate / raw_rate:>8.2f}")
    print(f"{'ASR audio s per s per core (tiny.en int8)':<44}{asr_rate:>10.2f}{1.0:>10.2f}{asr_rate:>8.2f}")
    print(f"\n{'voice':<18}{'mean WER':>9}{'median':>8}{'p90':>7}{'<=0.1':>7}{'<=0.2':>7}")
    for voice, w in wers.items():
        a = np.array(w)
        print(f"{voice:<18}{a.mean():>9.3f}{np.median(a):>8.3f}{np.quantile(a, 0.9):>7.3f}"
              f"{(a <= 0.1).mean():>7.0%}{(a <= 0.2).mean():>7.0%}")
    every = np.concatenate([np.array(w) for w in wers.values()])
    print(f"{'all':<18}{every.mean():>9.3f}{np.median(every):>8.3f}{np.quantile(every, 0.9):>7.3f}"
          f"{(every <= 0.1).mean():>7.0%}{(every <= 0.2).mean():>7.0%}")


if __name__ == "__main__":
    main()
