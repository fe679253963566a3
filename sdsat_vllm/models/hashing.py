"""sha256 of files, and the check of a file against its pin."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ChecksumError, ModelFetchError
from .progress import progress_bar

__all__ = ["CHUNK", "sha256_file", "verify_sha256"]

CHUNK = 1 << 20  # bytes read (and hashed) at a time


def sha256_file(path: os.PathLike | str, *, progress: bool = False) -> str:
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f, progress_bar(path.stat().st_size, f"sha256 {path.name}", progress) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verify_sha256(path: os.PathLike | str, expected: str, *, what: str = "file", progress: bool = False) -> str:
    """Hash ``path``; raise :class:`ChecksumError` naming the file unless it matches ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFetchError(f"{what} {path} is missing")
    actual = sha256_file(path, progress=progress)
    if actual != expected.lower():
        raise ChecksumError(path, expected.lower(), actual, what)
    return actual
