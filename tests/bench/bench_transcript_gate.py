"""Transcript gate: real speech with mislabelled transcripts, kept and rejected per max_ref_wer.

Speech: the English prompts of Asterisk (Debian `asterisk-core-sounds-en-wav`: one speaker,
8 kHz telephone WAV) with their transcripts (`asterisk-core-sounds-en`: core-sounds-en.txt.gz,
`name: text` lines; bracketed lines are tones and are left out). Both packages are fetched
with `apt-get download` + `dpkg -x` into a cache folder (BENCH_GATE_CACHE, default
<tmp>/omnicurate-asterisk) on the first run; nothing is committed.

BENCH_GATE_CLIPS prompts (default 300, drawn with a fixed seed from the ~540 that have a WAV)
become ASR samples ("<audio> Transcribe the speech." -> transcript). A fifth of them get
another drawn clip's transcript (the chosen clips' transcripts rotated by one); a swap whose
two texts normalise the same counts as correct. Every clip goes through the transcribe stage
with the default recipe's settings (recipes/sft-stage3.yaml: Whisper tiny.en from `make
setup`, int8, one thread, greedy), with the gate off so that each clip's error rate is
recorded once; each max_ref_wer is then applied to the gate's own rate (characters,
curate.asr.reference_error) with the stage's own rule (curate.stages.transcribe.mismatched).
Printed per threshold: the share of wrong-transcript clips kept (goal 0) and of correct clips
kept (goal >= 95%), then the clips each side of the default's line.

    python -m tests.bench transcript_gate          # BENCH_GATE_CLIPS=300 (about 2-4 CPU minutes)
"""

from __future__ import annotations

import gzip
import os
import random
import resource
import subprocess
import tempfile
import time
import wave
from pathlib import Path

from curate import asr
from curate.recipe import TranscribeConfig, load_recipe
from curate.records import CORE_SCHEMA, empty_media
from curate.stages.base import RunContext
from curate.stages.transcribe import TranscribeStage, mismatched

PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
CACHE = Path(os.environ.get("BENCH_GATE_CACHE") or Path(tempfile.gettempdir()) / "omnicurate-asterisk")
N_CLIPS = int(os.environ.get("BENCH_GATE_CLIPS", "300"))
SWAP_SHARE = 0.2
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml"
SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


def fetch(cache: Path = CACHE) -> Path:
    """The two packages unpacked under cache/root (downloaded once)."""
    root = cache / "root"
    if (root / TRANSCRIPTS).is_file() and (root / SOUNDS).is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=cache, check=True, capture_output=True)
    for deb in sorted(cache.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def prompts(root: Path) -> list[tuple[str, str, Path]]:
    """(name, transcript, wav) of every spoken prompt that has a WAV file."""
    out = []
    with gzip.open(root / TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            text = text.strip()
            if not sep or line.startswith(";") or not text or text.startswith("["):
                continue
            wav = root / SOUNDS / f"{name.strip()}.wav"
            if wav.is_file():
                out.append((name.strip(), text, wav))
    return out


def mislabel(clips: list[tuple[str, str, Path]], share: float, seed: int = 0) -> list[tuple[str, str, str, Path]]:
    """(name, own transcript, given transcript, wav): `share` of the clips get the next chosen clip's text."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(clips)), round(len(clips) * share)))
    given = [text for _, text, _ in clips]
    for a, b in zip(chosen, chosen[1:] + chosen[:1]):
        given[a] = clips[b][1]
    return [(name, text, given[i], wav) for i, (name, text, wav) in enumerate(clips)]


def sample_row(i: int, name: str, transcript: str, wav: Path) -> dict:
    row = {k: None for k in CORE_SCHEMA.names}
    row.update(id=name, source="asterisk", origin="manifest", manifest="bench.jsonl", line=i, meta="{}",
               modality="audio", media=[empty_media("audio", f"{name}.wav") | {"path": str(wav), "tiles": 0}],
               conversations=[{"from": "human", "value": "<audio>\nTranscribe the speech."},
                              {"from": "gpt", "value": transcript}])
    return row


def duration(wav: Path) -> float:
    with wave.open(str(wav)) as f:
        return f.getnframes() / f.getframerate()


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def main() -> None:
    try:
        root = fetch()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"cannot fetch {PACKAGES} with apt-get download: {e}; skipped")
        return
    every = prompts(root)
    clips = random.Random(1).sample(every, min(N_CLIPS, len(every)))
    samples = mislabel(clips, SWAP_SHARE)
    wrong = [asr.normalize(own) != asr.normalize(given) for _, own, given, _ in samples]

    default = load_recipe(RECIPE).stages.transcribe
    cfg = TranscribeConfig.model_validate(default.model_dump() | {"max_ref_wer": None})  # record every rate
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        stage = TranscribeStage(cfg, RunContext(out_dir=tmp))
        stage.validate()
        stage.setup()
        rows = [sample_row(i, name, given, wav) for i, (name, _, given, wav) in enumerate(samples)]
        stage.process_rows(rows[:1])  # model load is not ASR time
        c0, w0 = cpu_seconds(), time.perf_counter()
        batch = stage.resolved_resources().batch_size
        for i in range(0, len(rows), batch):
            stage.process_rows(rows[i: i + batch])
        cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
    seconds = sum(duration(wav) for *_, wav in samples)
    lost = [r for r in rows if r["reject_reason"]]
    # the gate's own rate (characters, curate.asr.reference_error) of every clip that reaches it
    rates = [None if r["reject_reason"] else
             asr.reference_error(given, r["asr_text"] or "", r["asr_language"])[1]
             for (*_, given, _), r in zip(samples, rows)]

    print(f"{len(rows)} of {len(every)} Asterisk prompts (seeded draw), {sum(wrong)} with another clip's "
          f"transcript; model {stage.model_label()} ({default.device}), {stage.threads()} thread(s)")
    print(f"ASR: {cpu:.0f} CPU s, {wall:.0f} s wall for {len(rows)} clips ({seconds:.0f} s of audio)")
    if lost:
        print(f"rejected before the gate: {[(r['id'], r['reject_reason']) for r in lost]}")
    # one-word prompts (digits, letters, ordinals) are where a word error rate is coarsest: 0 or >= 1
    long_ref = [len(asr.normalize(given).split()) >= 3 for _, _, given, _ in samples]
    print(f"\n{'':>11}{'all clips':^28}{'references of >= 3 words':^28}")
    print(f"{'max_ref_wer':>11}" + f"{'wrong kept':>13}{'correct kept':>15}" * 2)
    for t in THRESHOLDS:
        kept = [r["reject_reason"] is None and not mismatched(w, t) for r, w in zip(rows, rates)]
        cells = ""
        for part in ([True] * len(rows), long_ref):
            bad = [k for k, w, p in zip(kept, wrong, part) if p and w]
            good = [k for k, w, p in zip(kept, wrong, part) if p and not w]
            cells += f"{sum(bad) / len(bad):>8.1%} ({sum(bad):>2}){sum(good) / len(good):>9.1%} ({sum(good):>3})"
        mark = "  <- default" if t == default.max_ref_wer else ""
        print(f"{t:>11.2f}{cells}{mark}")
    reached = [not w and r["reject_reason"] is None for r, w in zip(rows, wrong)]
    kept = sum(g and not mismatched(rate, default.max_ref_wer) for g, rate in zip(reached, rates))
    print(f"correct clips that reach the gate (not rejected silent_audio / no_speech before it): "
          f"{kept} of {sum(reached)} kept ({kept / sum(reached):.1%}) at the default")

    limit = default.max_ref_wer
    print(f"\nat the default max_ref_wer {limit}:")
    for (name, own, given, _), w, r, rate in zip(samples, wrong, rows, rates):
        if rate is not None and w != mismatched(rate, limit):
            side = "wrong kept" if w else "correct rejected"
            print(f"  {side:<17}{name:<28}{rate:>6.2f}  ref {given[:60]!r}  heard {(r['asr_text'] or '')[:60]!r}")
    if rates:
        swapped = sorted(rate for rate, w in zip(rates, wrong) if w and rate is not None)
        right = sorted(rate for rate, w in zip(rates, wrong) if not w and rate is not None)
        print(f"error rate of wrong transcripts: min {swapped[0]:.2f}, median {swapped[len(swapped) // 2]:.2f}; "
              f"of correct ones: median {right[len(right) // 2]:.2f}, 95th percentile "
              f"{right[int(len(right) * 0.95)]:.2f}, max {right[-1]:.2f}")


if __name__ == "__main__":
    main()
