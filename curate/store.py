"""Content-addressed media store: every file lives once, at <root>/<sha[:2]>/<sha><ext>.

Writes go to a temporary name and are renamed into place, so a crash never leaves a
half-written file under a real name, and two workers storing the same bytes are harmless.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


class MediaStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._made: set[Path] = set()

    def path_for(self, sha256: str, ext: str) -> Path:
        ext = ext if not ext or ext.startswith(".") else f".{ext}"
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def put_bytes(self, data: bytes, ext: str) -> tuple[Path, str]:
        """Store bytes; returns (path, sha256). Existing content is not rewritten."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, ext)
        if not path.exists():
            self._mkdir(path.parent)
            tmp = path.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{sha[:16]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return path, sha

    def _mkdir(self, folder: Path) -> None:
        """Create a fan-out folder once per process (256 of them), not once per file."""
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)

    def put_file(self, src: str | os.PathLike[str], ext: str) -> tuple[Path, str]:
        """Move a finished temporary file into the store (hashing it in chunks)."""
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        sha = h.hexdigest()
        path = self.path_for(sha, ext)
        if path.exists():
            os.unlink(src)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, path)
        return path, sha

    def contains(self, path: str | os.PathLike[str]) -> bool:
        try:
            Path(path).resolve().relative_to(self.root.resolve())
            return True
        except ValueError:
            return False

    def tmp_dir(self) -> Path:
        d = self.root / ".tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d
