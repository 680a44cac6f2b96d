"""Text-to-speech back-ends behind one small interface, writing 16 kHz mono FLAC to the media store.

A back-end turns (text, voice) into WAV bytes; `synthesize_to_store` resamples them to
16 kHz mono FLAC with ffmpeg and stores them by content (curate.store.MediaStore), so the
same sentence in the same voice is stored once. Two back-ends:

- EspeakTTS (default): the espeak-ng binary, offline, 100+ voices and variants
  (`en-us`, `en-gb-scotland`, `en+f3` = English with the female variant 3, ...).
- PiperTTS: a neural voice (piper, https://github.com/rhasspy/piper) from a local `.onnx`
  voice file. It only works when a voice file is configured and the `piper` command is on
  PATH; otherwise `available()` says why and `synthesize` raises TTSError.

Voices are chosen per sample by `pick_voice(voices, seed, key)`: a hash of the run seed and
the sample id, so the same recipe and seed always give the same voice to the same sample.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from curate.store import MediaStore

SAMPLE_RATE = 16_000
TTS_TIMEOUT_S = 60


class TTSError(RuntimeError):
    """Synthesis failed or the back-end is not configured; the message says what to fix."""


class TTSBackend(Protocol):
    name: str

    def available(self) -> str | None:
        """None when the back-end can synthesize; otherwise the reason it cannot."""

    def synthesize_wav(self, text: str, voice: str) -> bytes:
        """WAV bytes of `text` spoken in `voice` (any rate; resampled afterwards)."""


def _run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TTS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise TTSError(f"{cmd[0]} took more than {TTS_TIMEOUT_S}s") from None
    except FileNotFoundError:
        raise TTSError(f"{cmd[0]} is not installed (make setup installs espeak-ng)") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise TTSError(f"{cmd[0]} failed: {err[-1] if err else f'exit {proc.returncode}'}")
    return proc.stdout


@dataclass(frozen=True)
class EspeakTTS:
    """espeak-ng: `voice` is any `espeak-ng -v` name, with an optional `+variant`."""

    speed: int = 160  # words per minute
    binary: str = "espeak-ng"
    name: str = "espeak"

    def available(self) -> str | None:
        return None if shutil.which(self.binary) else f"{self.binary} not found on PATH (apt-get install espeak-ng)"

    def unknown_voices(self, voices: list[str]) -> list[str]:
        """Voices espeak-ng does not know (it would silently fall back to its default voice)."""
        names = _espeak_names(self.binary, "")
        variants = _espeak_names(self.binary, "variant")
        out = []
        for v in voices:
            base, _, variant = v.partition("+")
            if base.lower() not in names or (variant and variant.lower() not in variants):
                out.append(v)
        return out

    def synthesize_wav(self, text: str, voice: str) -> bytes:
        # `--` ends the options, so a sentence starting with "-" is read, not parsed.
        wav = _run([self.binary, "-v", voice, "-s", str(self.speed), "--stdout", "--", text])
        if len(wav) <= 44:  # a bare WAV header: espeak-ng had nothing to say (unknown voice, empty text)
            raise TTSError(f"espeak-ng produced no audio for voice {voice!r}")
        return wav


def _espeak_names(binary: str, which: str) -> set[str]:
    """Lower-cased language codes, voice names and file names from `espeak-ng --voices[=which]`."""
    listing = _run([binary, f"--voices={which}" if which else "--voices"]).decode(errors="replace")
    names = set()
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update({cols[1].lower(), cols[3].lower(), cols[4].rsplit("/", 1)[-1].lower()})
    return names


@dataclass(frozen=True)
class PiperTTS:
    """piper with a local `.onnx` voice (its `.onnx.json` beside it); `voice` is a speaker id or ''."""

    model: str | None = None
    binary: str = "piper"
    name: str = "piper"

    def available(self) -> str | None:
        if not self.model:
            return "piper is not configured: set stages.audio_qa.piper_voice to a local .onnx voice file"
        if not Path(self.model).is_file():
            return f"piper voice file {self.model} does not exist"
        if not shutil.which(self.binary):
            return f"the {self.binary} command is not on PATH (pip install piper-tts)"
        return None

    def synthesize_wav(self, text: str, voice: str) -> bytes:
        reason = self.available()
        if reason:
            raise TTSError(reason)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            cmd = [self.binary, "--model", str(self.model), "--output_file", str(out)]
            if voice and voice.isdigit():
                cmd += ["--speaker", voice]
            _run(cmd, stdin=text.encode())
            return out.read_bytes()


def make_backend(kind: str, speed: int = 160, piper_voice: str | None = None) -> TTSBackend:
    if kind == "espeak":
        return EspeakTTS(speed=speed)
    if kind == "piper":
        return PiperTTS(model=piper_voice)
    raise ValueError(f"unknown TTS back-end {kind!r}; use espeak or piper")


def pick_voice(voices: list[str], seed: int, key: str) -> str:
    """The voice for one sample: deterministic in (seed, key), spread evenly over the list."""
    if not voices:
        raise ValueError("the voice list is empty; give at least one voice")
    digest = hashlib.sha256(f"voice\x00{seed}\x00{key}".encode()).digest()
    return voices[int.from_bytes(digest[:8], "big") % len(voices)]


def flac_duration(path: str | os.PathLike[str]) -> float:
    """Seconds of a FLAC file from its STREAMINFO block (sample rate and total samples)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:4] != b"fLaC":
        raise TTSError(f"{path} is not a FLAC file")
    info = int.from_bytes(head[18:26], "big")  # rate 20 bits | channels 3 | bits 5 | total samples 36
    rate, total = info >> 44, info & ((1 << 36) - 1)
    if not rate or not total:
        raise TTSError(f"{path}: FLAC header has no sample count")
    return total / rate


def synthesize_to_store(backend: TTSBackend, text: str, voice: str, store: MediaStore,
                        sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Speak `text`, store it as mono FLAC at `sample_rate` (one ffmpeg call); returns an audio media item."""
    wav = backend.synthesize_wav(text, voice)
    fd, tmp = tempfile.mkstemp(dir=store.tmp_dir(), suffix=".flac")
    os.close(fd)
    try:
        # Written to a seekable file, so ffmpeg fills in STREAMINFO's sample count at the end.
        _run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", "pipe:0", "-ac", "1", "-ar", str(sample_rate),
              "-f", "flac", tmp], stdin=wav)
        seconds = flac_duration(tmp)
        path, sha = store.put_file(tmp, ".flac")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"kind": "audio", "ref": f"tts:{backend.name}:{voice}", "path": str(path), "sha256": sha,
            "bytes": os.path.getsize(path), "mime": "audio/flac", "width": None, "height": None, "grid_w": None,
            "grid_h": None, "tiles": 0, "frames": None, "duration": seconds}
