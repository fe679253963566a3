"""The cache of converted models: one directory per model, built in a work directory beside it and
moved into place with ``os.replace`` only when complete, a marker file (written last) recording
where it came from and the size and sha256 of every file in it. An entry is served again only if
its marker says what the caller expects and every file still has its recorded size and sha256
(hashed once per process per entry: :func:`entry_problem`); anything else is rebuilt.

Cache layout (``$SDSAT_CACHE`` replaces the default root ``~/.cache/sdsat_vllm/models``)::

    <root>/smollm2-135m/            a known model, keyed by name
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja  [LICENSE]
        sdsat_source.json           marker, written last: pins, GGUF sha256, versions, every
                                    file's size ("files") and sha256 ("sha256")
    <root>/gguf-<sha256[:16]>/      a local .gguf file converted by resolve_model(path)
    <root>/<sdsat-name>-<sha[:12]>/ a shipped SDSAT model (base + adapter), built by sdsat_vllm.adapters
                                    with the same staging and the same kind of marker
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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import hashing
from .progress import log

__all__ = ["CACHE_ENV", "DEFAULT_CACHE", "MARKER_FILE", "cache_root", "commit", "entry_problem", "gguf_sha256",
           "model_metadata", "read_marker", "reusable", "staging", "write_marker"]

MARKER_FILE = "sdsat_source.json"
MARKER_FORMAT = 2  # 2: "sha256" of every file beside "files" (their sizes); 1 had the sizes only
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


# Entries whose files were hashed and matched in this process, keyed by what a change to the entry
# would change (the marker's inode and mtime, every file's size and mtime): hashing a 3 GB model on
# every resolve_model call would cost seconds each time, once per process is enough to catch a file
# damaged on disk or half-copied since it was built.
_VERIFIED: set[tuple] = set()


def _stamp(entry: Path, names: Iterable[str]) -> tuple:
    m = (entry / MARKER_FILE).stat()
    files = tuple((n, (entry / n).stat().st_size, (entry / n).stat().st_mtime_ns) for n in sorted(names))
    return (str(entry), m.st_ino, m.st_mtime_ns, files)


def forget_verified() -> None:
    """Hash every entry again on its next use, as a new process would (tests)."""
    _VERIFIED.clear()


def _file_problem(entry: Path, name: str, size: int) -> str | None:
    p = entry / name
    if not p.is_file():
        return f"{name} is missing"
    if p.stat().st_size != size:
        return f"{name} has {p.stat().st_size} bytes, the marker says {size} (truncated or overwritten)"
    return None


def _upgrade_marker(entry: Path, marker: dict[str, Any]) -> None:
    """A format-1 marker (sizes only, written before sha256 was recorded) gets the sha256 of the files
    as they are now, once. Why not rebuild instead: a rebuild downloads the wheels again (GBs for the
    Qwen models) and fails on a machine that fetched once and is now offline, while the sizes, checked
    before this, catch the damage an interrupted copy leaves; from then on the entry is held to these
    digests like a new one."""
    log(f"{entry}: its marker has no sha256 (written by an older version); recording its files' sha256 once")
    try:
        write_marker(entry, {k: v for k, v in marker.items() if k not in ("format", "files", "sha256", "created")})
    except OSError as e:  # a read-only cache: served on its sizes, as before
        log(f"{entry}: cannot rewrite its marker ({e}); serving it on its sizes only")
        return
    _VERIFIED.add(_stamp(entry, (read_marker(entry) or marker)["files"]))


def entry_problem(entry: os.PathLike | str, expect: Mapping[str, Any]) -> str | None:
    """Why the cache entry cannot be served as it is, in a few words; None if it can.

    It can when its marker holds every key of ``expect`` with that value (what the caller would build
    now: the GGUF pin, the adapter's digests) and every file the marker lists has its recorded size
    (always checked) and sha256 (hashed once per process per entry, see ``_VERIFIED``)."""
    entry = Path(entry)
    if not entry.is_dir():
        return "not built yet"
    marker = read_marker(entry)
    if marker is None:
        return f"no readable {MARKER_FILE} (it is written last: the build did not finish, or it was removed)"
    for key in expect:
        if marker.get(key) != expect[key]:
            return f"built from other inputs (its marker's {key} is not this version's)"
    sizes = marker.get("files") or {}
    if "config.json" not in sizes:
        return "its marker lists no config.json (not a model directory this package wrote)"
    for name, size in sizes.items():
        if problem := _file_problem(entry, name, size):
            return problem
    if marker.get("format") == 1:
        _upgrade_marker(entry, marker)
        return None
    digests = marker.get("sha256") or {}
    if marker.get("format") != MARKER_FORMAT or set(digests) != set(sizes):
        return f"its marker (format {marker.get('format')!r}) has no sha256 for every file"
    stamp = _stamp(entry, sizes)
    if stamp in _VERIFIED:
        return None
    for name, want in digests.items():
        got = hashing.sha256_file(entry / name)
        if got != want:
            return f"{name} has sha256 {got[:12]}…, its marker says {want[:12]}… (damaged on disk)"
    _VERIFIED.add(stamp)
    return None


def reusable(entry: Path, expect: Mapping[str, Any]) -> bool:
    """The entry can be served as it is (:func:`entry_problem`); one that exists but cannot is
    rebuilt by the caller, and this logs the line saying why."""
    problem = entry_problem(entry, expect)
    if problem is not None and entry.exists():
        log(f"{entry}: {problem}; rebuilding it")
    return problem is None


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


def commit(staged: Path, entry: Path, work: Path, expect: Mapping[str, Any]) -> Path:
    """Move the finished directory (its marker written) into place atomically, replacing an old entry
    if any. ``expect``: what :func:`entry_problem` checks, for the entry of a process that won a race."""
    if entry.exists():
        os.replace(entry, work / "old-entry")  # same filesystem: atomic rename out of the way
    try:
        os.replace(staged, entry)
    except OSError:
        # Another process finished first; keep its entry if it is good.
        if entry_problem(entry, expect) is None:
            return entry
        raise
    marker = read_marker(entry) or {}
    _VERIFIED.add(_stamp(entry, marker.get("files") or {}))  # just hashed by write_marker
    return entry


def _files(hf_dir: Path) -> list[str]:
    """Every file under hf_dir but the marker, as relative POSIX paths (a gated model has sdsat_adapter/)."""
    return sorted(p.relative_to(hf_dir).as_posix() for p in hf_dir.rglob("*") if p.is_file()
                  and p.relative_to(hf_dir).as_posix() not in (MARKER_FILE, MARKER_FILE + ".part"))


def write_marker(hf_dir: Path, marker: dict[str, Any]) -> None:
    """Write the marker last: what the entry is (``marker``), plus the size and sha256 of every file."""
    names = _files(hf_dir)
    marker = dict(marker)
    marker["format"] = MARKER_FORMAT
    marker["files"] = {n: (hf_dir / n).stat().st_size for n in names}
    marker["sha256"] = {n: hashing.sha256_file(hf_dir / n) for n in names}
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
