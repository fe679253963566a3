"""What fetching, checking or converting a model raises."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ChecksumError", "ModelFetchError"]


class ModelFetchError(RuntimeError):
    """Fetching, checking or converting a model failed. Nothing was written to the cache."""


class ChecksumError(ModelFetchError):
    def __init__(self, path: os.PathLike | str, expected: str, actual: str, what: str = "file"):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"sha256 mismatch for {what} {Path(path).name} ({path}):\n"
            f"  expected {expected}\n  actual   {actual}"
        )
