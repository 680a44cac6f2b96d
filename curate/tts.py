"""Text-to-speech back-ends behind one small interface, writing 16 kHz mono FLAC to the media store.

A back-end turns (text, voice name, VoiceParams) into float32 samples at its own rate;
`synthesize_to_store` resamples them to 16 kHz in numpy (scipy's polyphase filter), encodes
FLAC with PyAV and stores it by content (curate.store.MediaStore). No process is started for
Piper, and one (espeak-ng itself) for espeak: an ffmpeg start per clip used to cost more than
the synthesis. Two back-ends:

- PiperTTS: a Piper neural voice (VITS, https://github.com/rhasspy/piper) run by onnxruntime,
  its noise drawn from seeded generators (curate.onnx_noise), so the same clip comes out every
  time; `joe` is the en_US-joe-medium voice installed by `make setup`, any other name is a local
  `.onnx` file with its `.onnx.json` beside it.
- EspeakTTS: the espeak-ng binary's formant voices (`en-us`, `en+f3` = English, female variant 3).

A voice is written `[backend:]name[*pitch]`: `piper:joe`, `espeak:en+f3`, `piper:joe*0.88`
(the joe voice a little deeper). A bare name uses the recipe's default back-end.

Variation (Baichuan-omni speaks its questions in many timbres): `draw_params` gives each clip
a speaking rate, a pitch factor, Piper's two noise scales and the seed of Piper's noise, drawn
from (seed, sample id), so a sample's clip is the same in every run. The
pitch factor p is applied by resampling, which raises pitch, formants and tempo together by p
(like sox `speed`, ffmpeg `asetrate`); the back-end speaks at rate r/p so the clip ends at rate r.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from curate.store import MediaStore

SAMPLE_RATE = 16_000
TTS_TIMEOUT_S = 60
BACKENDS = ("espeak", "piper")


class TTSError(RuntimeError):
    """Synthesis failed or the back-end is not configured; the message says what to fix."""


@dataclass(frozen=True)
class VoiceParams:
    """Per-clip variation: rate and pitch are factors (1 = the voice as shipped)."""

    rate: float = 1.0
    pitch: float = 1.0
    noise_scale: float | None = None  # Piper: phoneme noise (None: the voice's default)
    noise_w: float | None = None  # Piper: duration noise (None: the voice's default)
    seed: int = 0  # Piper: seeds its noise draws (clip_seed); not a voice setting, so not in as_dict

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items() if v is not None and k != "seed"}


@dataclass(frozen=True)
class Voice:
    backend: str
    name: str
    pitch: float = 1.0  # fixed pitch factor of this voice setting, times the per-clip one

    def __str__(self) -> str:
        return f"{self.backend}:{self.name}" + (f"*{self.pitch:g}" if self.pitch != 1.0 else "")


def parse_voice(spec: str, default_backend: str = "espeak") -> Voice:
    """`[backend:]name[*pitch]` -> Voice; ValueError naming the spec when malformed."""
    backend, sep, rest = spec.partition(":")
    if not sep or backend not in BACKENDS:
        backend, rest = default_backend, spec
    name, star, factor = rest.partition("*")
    try:
        pitch = float(factor) if star else 1.0
    except ValueError:
        raise ValueError(f"voice {spec!r}: pitch after '*' must be a number, e.g. piper:joe*0.9") from None
    if not name or not 0.5 <= pitch <= 2.0:
        raise ValueError(f"voice {spec!r}: write [espeak:|piper:]name[*pitch] with pitch in [0.5, 2]")
    return Voice(backend, name, pitch)


class TTSBackend(Protocol):
    name: str

    def available(self, voice: str) -> str | None:
        """None when the back-end can speak in `voice`; otherwise the reason it cannot."""

    def synthesize(self, text: str, voice: str, params: VoiceParams) -> tuple[np.ndarray, int]:
        """float32 mono samples of `text` at rate `params.rate` (pitch is applied afterwards) and their rate;
        the same arguments give the same samples (`params.seed` seeds a back-end's random draws, if any)."""


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


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> float32 mono samples in [-1, 1] and the sample rate."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise TTSError(f"expected 16-bit WAV, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels).mean(axis=1), rate


@dataclass(frozen=True)
class EspeakTTS:
    """espeak-ng: `voice` is any `espeak-ng -v` name, with an optional `+variant`."""

    speed: int = 160  # words per minute at rate 1
    binary: str = "espeak-ng"
    name: str = "espeak"

    def available(self, voice: str = "") -> str | None:
        if not shutil.which(self.binary):
            return f"{self.binary} not found on PATH (apt-get install espeak-ng)"
        if voice and self.unknown_voices([voice]):
            return (f"espeak-ng has no voice {voice!r}; list them with `espeak-ng --voices` "
                    f"and `espeak-ng --voices=variant`")
        return None

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

    def synthesize(self, text: str, voice: str, params: VoiceParams = VoiceParams()) -> tuple[np.ndarray, int]:
        speed = max(80, min(450, round(self.speed * params.rate)))
        # `--` ends the options, so a sentence starting with "-" is read, not parsed.
        wav = _run([self.binary, "-v", voice, "-s", str(speed), "--stdout", "--", text])
        if len(wav) <= 44:  # a bare WAV header: espeak-ng had nothing to say (unknown voice, empty text)
            raise TTSError(f"espeak-ng produced no audio for voice {voice!r}")
        return read_wav(wav)


@functools.lru_cache(maxsize=4)
def _espeak_names(binary: str, which: str) -> frozenset[str]:
    """Lower-cased language codes, voice names and file names from `espeak-ng --voices[=which]`."""
    listing = _run([binary, f"--voices={which}" if which else "--voices"]).decode(errors="replace")
    names = set()
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update({cols[1].lower(), cols[3].lower(), cols[4].rsplit("/", 1)[-1].lower()})
    return frozenset(names)


def piper_model_path(voice: str) -> Path:
    """`joe` -> the bundled en_US-joe-medium voice; anything else is a local .onnx path."""
    if voice == "joe":
        from curate.paths import piper_joe_path

        return piper_joe_path()
    return Path(voice)


class PiperTTS:
    """Piper voices on onnxruntime, one session per voice file, deterministic in (seed, text, voice, params).

    VITS draws two noise tensors per clip (the duration predictor's and the prior's, scaled in the
    graph by noise_w and noise_scale). onnxruntime's RandomNormalLike would draw them from a
    generator that every call advances, so a clip would depend on the calls before it in that
    process. The voice is rewritten once at load (curate.onnx_noise) to read that noise from
    inputs, drawn here per clip from numpy generators seeded by (seed, voice, text, node): the
    same clip comes out of any actor, in any order, after a crash and resume.

    The session runs on one thread, sequentially, with deterministic compute on, whatever `threads`
    (the CPUs the runner granted the stage) says: onnxruntime splits a kernel's sums by its
    intra-op thread count, so the samples change with it (the same clips with 3 threads instead
    of 1 differed by up to 3e-6, enough to flip a 16-bit sample and so the stored FLAC), and a
    recipe's resources must not change its shards. Inter-op threads would keep the bytes but
    were no faster on this graph. More CPUs speed Piper up through more actors instead."""

    name = "piper"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._voices: dict[str, Any] = {}
        self._noise: dict[str, list[Any]] = {}  # voice -> curate.onnx_noise.NoiseInput per noise node
        self._per_id: dict[str, list[float]] = {}  # voice -> most noise values per phoneme id, per node
        self._phonemizers: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle; actors reload them
        return {"threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["threads"])

    def available(self, voice: str = "joe") -> str | None:
        try:
            path = piper_model_path(voice)
        except FileNotFoundError as e:
            return str(e)
        if path.suffix != ".onnx" or not path.is_file():
            return f"piper voice {voice!r}: no such .onnx file (use piper:joe or a local .onnx voice path)"
        if not Path(f"{path}.json").is_file():
            return f"piper voice {path}: its config {path}.json is missing"
        try:
            import piper_onnx  # noqa: F401
        except ImportError:
            return "piper-onnx is not installed (make setup: pip install piper-onnx==1.0.6)"
        return None

    def voice(self, voice: str) -> Any:
        """The loaded Piper voice (its config and onnxruntime session), cached per voice name; the
        session runs the rewritten graph, kept in memory only."""
        if voice not in self._voices:
            reason = self.available(voice)
            if reason:
                raise TTSError(reason)
            import onnxruntime as ort
            from piper_onnx import Piper

            from curate.onnx_noise import seed_noise_inputs

            path = piper_model_path(voice)
            try:
                model, noise = seed_noise_inputs(path.read_bytes())
            except ValueError as e:  # not ONNX, or noise nodes it cannot feed
                raise TTSError(f"piper voice {path}: cannot feed its noise from outside: {e}") from e
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # not self.threads: see the docstring
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.use_deterministic_compute = True
            session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
            self._voices[voice] = Piper.from_session(session, f"{path}.json")
            self._noise[voice], self._per_id[voice] = noise, [0.0] * len(noise)
        return self._voices[voice]

    def phonemes(self, piper: Any, text: str) -> str:
        """espeak-ng IPA with stress marks and punctuation, as Piper voices are trained on."""
        lang = piper.config.get("espeak", {}).get("voice", "en-us")
        if lang not in self._phonemizers:
            from phonemizer.backend import EspeakBackend

            self._phonemizers[lang] = EspeakBackend(lang, preserve_punctuation=True, with_stress=True)
        return self._phonemizers[lang].phonemize([text], strip=True)[0]

    @staticmethod
    def phoneme_ids(piper: Any, phonemes: str) -> list[int]:
        """Piper's input ids: BOS, each known phoneme followed by PAD, EOS (as piper-onnx writes them)."""
        table = piper.phoneme_id_map
        ids = []
        for p in "^" + phonemes:
            if p in table:
                ids += table[p] + table["_"]
        return ids + table["$"]

    def synthesize(self, text: str, voice: str, params: VoiceParams = VoiceParams()) -> tuple[np.ndarray, int]:
        piper = self.voice(voice)
        inference = piper.config["inference"]
        ids = self.phoneme_ids(piper, self.phonemes(piper, text))
        scales = [inference["noise_scale"] if params.noise_scale is None else params.noise_scale,
                  inference["length_scale"] / params.rate,
                  inference["noise_w"] if params.noise_w is None else params.noise_w]
        feeds = {"input": np.array([ids], dtype=np.int64), "input_lengths": np.array([len(ids)], dtype=np.int64),
                 "scales": np.array(scales, dtype=np.float32)}
        if "sid" in piper.sess_inputs_names:
            feeds["sid"] = np.zeros(1, dtype=np.int64)
        noise, per_id = self._noise[voice], self._per_id[voice]
        key = hashlib.sha256(f"piper-noise\x00{params.seed}\x00{voice}\x00{text}".encode()).digest()
        # Each node's values are a prefix of one stream, so the clip does not depend on how many were
        # drawn: the first guess comes from earlier clips, and a short guess is redrawn at the size needed.
        sizes = [max(64, int(r * len(ids) * 1.25)) for r in per_id]
        # (The prior's size follows the durations, which follow the duration noise: up to 3 runs.)
        for _ in range(4):
            for k, (node, size) in enumerate(zip(noise, sizes)):
                rng = np.random.default_rng([int.from_bytes(key[:16], "big"), k])
                feeds[node.name] = rng.standard_normal(size, dtype=np.float32)
            try:
                audio, *shapes = piper.sess.run(None, feeds)
            except Exception as e:  # onnxruntime raises its own exception types
                raise TTSError(f"piper voice {voice!r} failed: {e}") from e
            needed = [int(np.prod(shape)) for shape in shapes]
            for k, n in enumerate(needed):
                per_id[k] = max(per_id[k], n / len(ids))
            if all(n <= size for n, size in zip(needed, sizes)):
                break
            sizes = [max(n, size) for n, size in zip(needed, sizes)]
        else:
            raise TTSError(f"piper voice {voice!r}: its noise sizes did not settle in 4 runs")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise TTSError(f"piper voice {voice!r} produced no audio")
        return audio, int(piper.sample_rate)


def make_backends(default: str = "espeak", speed: int = 160, threads: int = 1) -> dict[str, TTSBackend]:
    """Both back-ends; `threads`: the CPUs granted, which Piper keeps to one (see PiperTTS)."""
    if default not in BACKENDS:
        raise ValueError(f"unknown TTS back-end {default!r}; use espeak or piper")
    return {"espeak": EspeakTTS(speed=speed), "piper": PiperTTS(threads)}


def _unit(seed: int, key: str, what: str) -> random.Random:
    digest = hashlib.sha256(f"{what}\x00{seed}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def clip_seed(seed: int, key: str) -> int:
    """The seed of one sample's clip (Piper's noise draws), from the run's seed and the sample id (key)."""
    digest = hashlib.sha256(f"clip-noise\x00{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def pick_voice(voices: list[str], seed: int, key: str) -> str:
    """The voice for one sample: deterministic in (seed, key), spread evenly over the list."""
    if not voices:
        raise ValueError("the voice list is empty; give at least one voice")
    digest = hashlib.sha256(f"voice\x00{seed}\x00{key}".encode()).digest()
    return voices[int.from_bytes(digest[:8], "big") % len(voices)]


def draw_params(seed: int, key: str, voice: Voice, rate: tuple[float, float] = (1.0, 1.0),
                pitch: tuple[float, float] = (1.0, 1.0), noise_scale: tuple[float, float] | None = None,
                noise_w: tuple[float, float] | None = None) -> VoiceParams:
    """Uniform draws in each [lo, hi] range, deterministic in (seed, key); the voice's own pitch multiplies
    in. Piper's noise seed comes from (seed, key) too, so the sample's clip is the same in every run."""
    rng = _unit(seed, key, "voice-params")
    p = VoiceParams(rate=rng.uniform(*rate), pitch=voice.pitch * rng.uniform(*pitch),
                    noise_scale=rng.uniform(*noise_scale) if noise_scale else None,
                    noise_w=rng.uniform(*noise_w) if noise_w else None, seed=clip_seed(seed, key))
    if voice.backend != "piper":  # the noise scales and their seed belong to Piper's VITS decoder
        p = VoiceParams(rate=p.rate, pitch=p.pitch)
    return p


def resample(audio: np.ndarray, rate: int, pitch: float = 1.0, target: int = SAMPLE_RATE) -> np.ndarray:
    """Audio at `rate` -> `target` Hz; pitch != 1 plays it as if recorded at rate*pitch (pitch and tempo x pitch)."""
    from scipy.signal import resample_poly

    ratio = Fraction(target, max(1, round(rate * pitch))).limit_denominator(1000)
    if ratio == 1:
        return audio.astype(np.float32)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def encode_flac(audio: np.ndarray, path: str, sample_rate: int = SAMPLE_RATE) -> None:
    """float32 mono -> 16-bit FLAC file with PyAV (STREAMINFO carries the sample count)."""
    import av

    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, -1)
    with av.open(path, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def load_flac(path: str | os.PathLike[str]) -> np.ndarray:
    """A stored 16-bit mono FLAC clip as float32 in [-1, 1], decoded in-process with PyAV (no ffmpeg start)."""
    import av

    try:
        with av.open(str(path)) as container:
            chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    except (av.error.FFmpegError, OSError) as e:
        raise TTSError(f"{path}: cannot decode FLAC ({e})") from e
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return pcm.astype(np.float32) / (32768.0 if pcm.dtype == np.int16 else 1.0)


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


def speak(backends: dict[str, TTSBackend], text: str, voice: Voice, params: VoiceParams = VoiceParams()
          ) -> np.ndarray:
    """16 kHz float32 speech: the back-end speaks at rate/pitch, the resampling shifts pitch and tempo by pitch."""
    inner = VoiceParams(params.rate / params.pitch, 1.0, params.noise_scale, params.noise_w, params.seed)
    audio, rate = backends[voice.backend].synthesize(text, voice.name, inner)
    return resample(audio, rate, params.pitch)


def synthesize_to_store(backends: dict[str, TTSBackend], text: str, voice: Voice | str, store: MediaStore,
                        params: VoiceParams = VoiceParams(), sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Speak `text`, store it as 16 kHz mono FLAC (no ffmpeg); returns an audio media item.
    The same arguments store the same bytes."""
    voice = parse_voice(voice) if isinstance(voice, str) else voice
    audio = speak(backends, text, voice, params)
    fd, tmp = tempfile.mkstemp(dir=store.tmp_dir(), suffix=".flac")
    os.close(fd)
    try:
        encode_flac(audio, tmp, sample_rate)
        path, sha = store.put_file(tmp, ".flac")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"kind": "audio", "ref": f"tts:{voice}", "path": str(path), "sha256": sha,
            "bytes": os.path.getsize(path), "mime": "audio/flac", "width": None, "height": None, "grid_w": None,
            "grid_h": None, "tiles": 0, "frames": None, "duration": len(audio) / sample_rate}
