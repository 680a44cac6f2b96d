"""Where media may come from. Nothing outside the allowed roots is ever opened.

A media reference is either a network URL (http/https, fetched by the download stage)
or a local path. Local paths (plain or file://) must resolve, after following symlinks,
inside the manifest's folder or one of the recipe's `stages.media.allowed_roots`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

NETWORK_SCHEMES = ("http", "https", "s3", "gs")


class UnsafeReference(ValueError):
    """A reference we refuse to open; `reason` is the reject reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def scheme_of(ref: str) -> str:
    """'' for a plain path; the lower-cased scheme otherwise (Windows drives count as paths)."""
    parsed = urlparse(ref)
    if len(parsed.scheme) <= 1:
        return ""
    return parsed.scheme.lower()


def is_network_url(ref: str) -> bool:
    return scheme_of(ref) in NETWORK_SCHEMES


def resolve_local(ref: str, manifest_dir: str | os.PathLike[str], allowed_roots: list[str]) -> Path:
    """Turn a local reference into a real path inside an allowed root, or raise UnsafeReference."""
    scheme = scheme_of(ref)
    if scheme == "file":
        parsed = urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            raise UnsafeReference("bad_scheme", f"file URL with a host is not allowed: {ref}")
        ref = unquote(parsed.path)
    elif scheme:
        raise UnsafeReference("bad_scheme", f"scheme '{scheme}' is not allowed (use http, https or a path): {ref}")
    if not ref or "\x00" in ref:
        raise UnsafeReference("bad_path", f"empty or invalid path {ref!r}")
    base = Path(manifest_dir)
    candidate = Path(ref) if os.path.isabs(ref) else base / ref
    real = Path(os.path.realpath(candidate))
    roots = [Path(os.path.realpath(base))] + [Path(os.path.realpath(r)) for r in allowed_roots]
    if not any(_inside(real, root) for root in roots):
        raise UnsafeReference(
            "path_outside_roots",
            f"{ref} resolves to {real}, outside the manifest folder and stages.media.allowed_roots",
        )
    return real


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
