"""Audio bench: TTS speed and read-back quality per voice setting and for the default audio-QA mix.

Questions are generated from templates over many nouns, colours, numbers and years (seeded, all
distinct), like the chart/photo/video questions audio-QA speaks. Every clip goes through the
stage's path: voice setting + per-clip rate/pitch/noise drawn from the recipe defaults
(curate.recipe.AudioQAConfig), 16 kHz FLAC in a temporary store, read back by the gate's Whisper
base on one CPU thread (int8, greedy). Printed per voice and for the default mix:

- clips/s per core: clips per CPU second of this process and its children (espeak-ng), so other
  work on a shared machine does not skew it; wall-clock clips/s beside it
- RTF: synthesis CPU seconds per second of speech
- pass: share of clips at or under the gate's max_wer 0.1; mean WER

Baseline in the same run: the previous espeak path (espeak-ng WAV -> one ffmpeg process -> FLAC).

    python -m tests.bench audio      # BENCH_AUDIO_QUESTIONS=100, BENCH_AUDIO_PER_VOICE=10
    BENCH_AUDIO_PARTS=voices python -m tests.bench audio     # only the per-voice rows (or: mix)
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import tempfile
import time

import numpy as np

from curate import asr
from curate.recipe import AudioQAConfig
from curate.store import MediaStore
from curate.tts import draw_params, load_flac, make_backends, parse_voice, pick_voice, synthesize_to_store

VOICES = ["piper:joe", "piper:joe*0.86", "piper:joe*1.1", "espeak:en-us", "espeak:en+f3"]
NOUNS = ["car", "dog", "bicycle", "table", "lamp", "window", "door", "tree", "boat", "train", "bottle", "chair",
         "cat", "horse", "bus", "umbrella", "kite", "clock", "laptop", "phone", "book", "cup", "truck", "bird",
         "bench", "sign", "house", "bridge", "flower", "hat"]
PEOPLE = ["man", "woman", "child", "girl", "boy", "player", "teacher", "driver"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "pink"]
PLACES = ["on the left", "on the right", "in the background", "near the door", "on the table", "in the corner"]
METRICS = ["revenue", "population", "temperature", "profit", "price", "rainfall", "sales", "income"]
MONTHS = ["January", "March", "April", "June", "August", "October", "December"]
TEMPLATES = [
    "What color is the {noun} {place}?",
    "How many {noun}s are there in the picture?",
    "Is the {color} {noun} to the left or to the right of the {noun2}?",
    "What is the {person} holding in the photo?",
    "Which bar in the chart is the tallest, and what is its value?",
    "What was the {metric} in {year}?",
    "By how much did the {metric} change between {year} and {year2}?",
    "Which month had the highest {metric} in {year}?",
    "What does the {color} line show in {month}?",
    "Is there a {noun} next to the {noun2}?",
    "What is the {person} doing {place}?",
    "How many {color} {noun}s can you see?",
    "What is written on the sign above the {noun}?",
    "Does the {metric} go up or down after {year}?",
    "What is the value of the {color} bar for {month}?",
    "Why is the {person} standing next to the {noun}?",
    "Where is the {color} {noun} in this video?",
    "What happens to the {noun} at the end of the video?",
]


def questions(n: int, seed: int = 0) -> list[str]:
    """n distinct template questions (seeded)."""
    rng, out = random.Random(seed), {}
    while len(out) < n:
        nouns = rng.sample(NOUNS, 2)
        year = rng.randint(1990, 2022)
        q = rng.choice(TEMPLATES).format(noun=nouns[0], noun2=nouns[1], color=rng.choice(COLORS),
                                         place=rng.choice(PLACES), person=rng.choice(PEOPLE),
                                         metric=rng.choice(METRICS), month=rng.choice(MONTHS), year=year,
                                         year2=year + rng.randint(1, 12))
        out[q] = None
    return list(out)


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def old_espeak_clip(text: str, voice: str, store: MediaStore) -> float:
    """The previous path: espeak-ng WAV piped through one ffmpeg process into FLAC; returns seconds of speech."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", "--", text], capture_output=True,
                         check=True).stdout
    fd, tmp = tempfile.mkstemp(dir=store.tmp_dir(), suffix=".flac")
    os.close(fd)
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", "pipe:0", "-ac", "1", "-ar", "16000",
                    "-f", "flac", tmp], input=wav, check=True)
    store.put_file(tmp, ".flac")
    return (len(wav) - 44) / 2 / 22050


class Tally:
    def __init__(self) -> None:
        self.clips, self.cpu, self.wall, self.audio, self.wers = 0, 0.0, 0.0, 0.0, []

    def row(self, label: str) -> str:
        head = (f"{label:<22}{self.clips:>6}{self.clips / self.cpu:>10.2f}{self.clips / self.wall:>9.2f}"
                f"{self.cpu / self.audio:>7.3f}")
        if not self.wers:
            return head + "   (baseline, not read back)"
        w = np.array(self.wers)
        return head + f"{(w <= 0.1).mean():>7.0%}{w.mean():>9.3f}"


def main() -> None:
    n = int(os.environ.get("BENCH_AUDIO_QUESTIONS", "100"))
    per_voice = int(os.environ.get("BENCH_AUDIO_PER_VOICE", "10"))
    texts = questions(n)
    cfg, seed = AudioQAConfig(), 0
    backends = make_backends(cfg.tts, cfg.speed)
    store = MediaStore(tempfile.mkdtemp(prefix="bench-audio-"))
    model = asr.load_whisper(None, "cpu", cpu_threads=1, default="base")
    asr.normalize("warm up")  # the text normaliser import is not ASR time
    for spec in {parse_voice(v).backend: v for v in [*VOICES, *cfg.voices]}.values():  # load each back-end once
        synthesize_to_store(backends, "Warm up.", parse_voice(spec), store)

    def run(jobs: list[tuple[str, str, str]], tally: dict[str, Tally]) -> None:
        for key, spec, text in jobs:
            voice = parse_voice(spec, cfg.tts)
            params = draw_params(seed, key, voice, cfg.rate, cfg.pitch, cfg.noise_scale, cfg.noise_w)
            c0, w0 = cpu_seconds(), time.perf_counter()
            item = synthesize_to_store(backends, text, voice, store, params)
            t = tally.setdefault(spec, Tally())
            t.cpu += cpu_seconds() - c0
            t.wall += time.perf_counter() - w0
            t.clips += 1
            t.audio += item["duration"]
            t.wers.append(asr.wer(text, asr.transcribe(model, load_flac(item["path"])).text))

    old = Tally()
    for text in texts[:per_voice]:
        c0, w0 = cpu_seconds(), time.perf_counter()
        old.audio += old_espeak_clip(text, "en-us", store)
        old.cpu += cpu_seconds() - c0
        old.wall += time.perf_counter() - w0
        old.clips += 1

    print(f"{n} template questions; {per_voice} per voice; default mix {cfg.voices}")
    print(f"rate {list(cfg.rate)}, pitch {list(cfg.pitch)}, noise_scale {list(cfg.noise_scale)}, "
          f"noise_w {list(cfg.noise_w)}; gate: Whisper base int8, 1 thread, WER <= 0.1\n")
    print(f"{'voice':<22}{'clips':>6}{'clips/cpu-s':>10}{'wall/s':>9}{'RTF':>7}{'pass':>7}{'mean WER':>9}")
    print(old.row("old espeak+ffmpeg"), flush=True)
    mix_by_voice: dict[str, Tally] = {}
    parts = os.environ.get("BENCH_AUDIO_PARTS", "mix,voices").split(",")  # run halves in parallel on a busy host
    run([(f"q{i}", pick_voice(cfg.voices, seed, f"q{i}"), t) for i, t in enumerate(texts) if "mix" in parts],
        mix_by_voice)
    for spec in VOICES if "voices" in parts else []:
        per: dict[str, Tally] = {}
        run([(f"q{i}", spec, t) for i, t in enumerate(texts[:per_voice])], per)
        print(per[spec].row(spec), flush=True)
    if "mix" not in parts:
        return
    mix = Tally()
    for t in mix_by_voice.values():
        mix.clips, mix.cpu, mix.wall, mix.audio = mix.clips + t.clips, mix.cpu + t.cpu, mix.wall + t.wall, \
            mix.audio + t.audio
        mix.wers += t.wers
    print(mix.row("default mix"))
    for spec, t in sorted(mix_by_voice.items()):
        print(t.row(f"  mix: {spec}"), flush=True)
    print(f"\nTTS clips per CPU second vs the old espeak path: default mix "
          f"{mix.clips / mix.cpu / (old.clips / old.cpu):.2f}x")


if __name__ == "__main__":
    main()
