"""The cache of converted models: one directory per model, built in a work directory beside it and
moved into place with ``os.replace`` only when complete, a marker file (written last) recording
where it came from.

Cache layout (``$SDSAT_CACHE`` replaces the default root ``~/.cache/sdsat_vllm/models``)::

    <root>/smollm2-135m/            a known model, keyed by name
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja  [LICENSE]
        sdsat_source.json           marker, written last: pins, GGUF sha256, versions
    <root>/gguf-<sha256[:16]>/      a local .gguf file converted by resolve_model(path)
    <root>/.tmp-<name>-<pid>-*/     work in progress (removed on success, error or interrupt)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "DEFAULT_CACHE", "MARKER_FILE", "cache_root", "gguf_sha256", "model_metadata", "read_marker"]

MARKER_FILE = "sdsat_source.json"
MARKER_FORMAT = 1
CACHE_ENV = "SDSAT_CACHE"
DEFAULT_CACHE = Path("~/.cache/sdsat_vllm/models")


def cache_root(cache_dir: os.PathLike | str | None = None) -> Path:
    """The directory holding one sub-directory per cached model."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(cache_dir).expanduser().resolve()


def read_marker(model_dir: os.PathLike | str) -> dict[str, Any] | None:
    """The marker of a cache entry, or None for a directory this module did not write."""
    path = Path(model_dir) / MARKER_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gguf_sha256(model_dir: os.PathLike | str) -> str | None:
    """sha256 of the GGUF a cached model was converted from (None if unknown)."""
    marker = read_marker(model_dir)
    return marker.get("gguf_sha256") if marker else None


def model_metadata(model_dir: os.PathLike | str) -> dict[str, Any]:
    """What a training run should record about its base model: id, path and GGUF sha256."""
    model_dir = Path(model_dir).resolve()
    marker = read_marker(model_dir) or {}
    return {
        "base_model": marker.get("name") or str(model_dir),
        "base_model_path": str(model_dir),
        "upstream": marker.get("upstream"),
        "gguf_sha256": marker.get("gguf_sha256"),
        "license": marker.get("license"),
    }


def entry_valid(entry: Path, expected_gguf_sha256: str) -> bool:
    marker = read_marker(entry)
    if not marker or marker.get("format") != MARKER_FORMAT or marker.get("gguf_sha256") != expected_gguf_sha256:
        return False
    for name, size in (marker.get("files") or {}).items():
        p = entry / name
        if not p.is_file() or p.stat().st_size != size:
            return False
    return (entry / "config.json").is_file()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_tmp(root: Path, key: str) -> None:
    """Remove work dirs of dead processes (e.g. killed with SIGKILL)."""
    for d in root.glob(f".tmp-{key}-*"):
        try:
            pid = int(d.name[len(f".tmp-{key}-"):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def staging(root: Path, key: str):
    """A work dir next to the cache entry; always removed at exit (success, error, interrupt)."""
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root, key)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def commit(staged: Path, entry: Path, work: Path, expected_gguf_sha256: str) -> Path:
    """Move the finished directory into place atomically (replacing an old entry if any)."""
    if entry.exists():
        os.replace(entry, work / "old-entry")  # same filesystem: atomic rename out of the way
    try:
        os.replace(staged, entry)
    except OSError:
        # Another process finished first; keep its entry if it is good.
        if entry_valid(entry, expected_gguf_sha256):
            return entry
        raise
    return entry


def write_marker(hf_dir: Path, marker: dict[str, Any]) -> None:
    marker = dict(marker)
    marker["format"] = MARKER_FORMAT
    marker["files"] = {
        p.name: p.stat().st_size for p in sorted(hf_dir.iterdir()) if p.is_file() and p.name != MARKER_FILE
    }
    marker["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = hf_dir / (MARKER_FILE + ".part")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, hf_dir / MARKER_FILE)


def copy_license(wheels: Iterable[Path], hf_dir: Path) -> None:
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            for n in zf.namelist():
                if n.endswith(".dist-info/LICENSE") or n.endswith(".dist-info/licenses/LICENSE"):
                    (hf_dir / "LICENSE").write_bytes(zf.read(n))
                    return
