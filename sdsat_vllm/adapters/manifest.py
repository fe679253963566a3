"""The sha256 manifest of a shipped adapter: ``SHA256SUMS`` in the adapter's directory.

It is in ``sha256sum`` format (``<sha256>  <file>`` per line, sorted), so ``cd <adapter dir> &&
sha256sum -c SHA256SUMS`` checks it without Python. It lives beside the files it pins, rather than
in a table in the code, so that replacing an adapter directory drops its old manifest with it: the
new adapter is refused (and tests/test_adapters.py fails) until whoever ships it writes a new one::

    python -m sdsat_vllm.adapters.manifest                     # every shipped adapter
    python -m sdsat_vllm.adapters.manifest sdsat_vllm/adapters/<dir> ...

:func:`verify_adapter` runs before a shipped model is built or served from the cache: a truncated
or damaged file (a broken install, a partial copy) is refused with the file and both digests,
instead of an obscure safetensors error or a model built from garbage.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..models.errors import ModelFetchError
from ..models import hashing

MANIFEST = "SHA256SUMS"
#: The files an adapter must pin: what apply_adapter reads (training/export.py).
REQUIRED = ("adapter_config.json", "adapter_model.safetensors", "sdsat.json")

__all__ = ["MANIFEST", "REQUIRED", "AdapterIntegrityError", "read_manifest", "verify_adapter", "write_manifest"]


class AdapterIntegrityError(ModelFetchError):
    """A shipped adapter's files do not match its manifest (a ModelFetchError: `sdsat fetch` reports it)."""


def _hint(adapter_dir: Path) -> str:
    return (f"Reinstall the package (pip install --force-reinstall --no-deps <the wheel or checkout it came from>; "
            f"in a git checkout, `git checkout -- {adapter_dir}`). If you replaced this adapter on purpose, write "
            f"its manifest: python -m sdsat_vllm.adapters.manifest {adapter_dir}")


def adapter_files(adapter_dir: os.PathLike | str) -> list[str]:
    """The files a manifest of ``adapter_dir`` pins: every file in it but the manifest."""
    return sorted(p.name for p in Path(adapter_dir).iterdir()
                  if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".part"))


def write_manifest(adapter_dir: os.PathLike | str) -> Path:
    """(Re)write ``adapter_dir/SHA256SUMS`` from the files as they are now."""
    adapter_dir = Path(adapter_dir)
    missing = [n for n in REQUIRED if not (adapter_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{adapter_dir} is not an SDSAT adapter: {', '.join(missing)} missing")
    lines = [f"{hashing.sha256_file(adapter_dir / n)}  {n}\n" for n in adapter_files(adapter_dir)]
    path = adapter_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".part")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return path


def read_manifest(adapter_dir: os.PathLike | str) -> dict[str, str]:
    """file name -> sha256, from ``adapter_dir/SHA256SUMS``."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / MANIFEST
    if not path.is_file():
        raise AdapterIntegrityError(f"shipped adapter {adapter_dir} has no {MANIFEST}, so its files cannot be "
                                    f"checked. {_hint(adapter_dir)}")
    out = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise AdapterIntegrityError(f"{path}: not a sha256sum line: {line!r}. {_hint(adapter_dir)}")
        out[name] = digest.lower()
    return out


def verify_adapter(adapter_dir: os.PathLike | str) -> dict[str, str]:
    """Check every file the manifest pins (present, same sha256) and that it pins the files an adapter
    needs; return the manifest. Raises :class:`AdapterIntegrityError` naming the file, what the
    manifest expects and what was found."""
    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    unpinned = [n for n in REQUIRED if n not in manifest]
    if unpinned:
        raise AdapterIntegrityError(f"{adapter_dir / MANIFEST} does not pin {', '.join(unpinned)}. "
                                    f"{_hint(adapter_dir)}")
    for name, want in manifest.items():
        path = adapter_dir / name
        if not path.is_file():
            raise AdapterIntegrityError(f"shipped adapter file {path} is missing (expected sha256 {want}). "
                                        f"{_hint(adapter_dir)}")
        got = hashing.sha256_file(path)
        if got != want:
            raise AdapterIntegrityError(
                f"shipped adapter file {path} is damaged or truncated ({path.stat().st_size} bytes):\n"
                f"  expected sha256 {want} ({MANIFEST})\n  found    sha256 {got}\n{_hint(adapter_dir)}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Rewrite the manifest of each adapter directory given (default: every shipped adapter)."""
    from . import SHIPPED

    dirs = argv if argv is not None else sys.argv[1:]
    for d in dirs or sorted({str(a.path) for a in SHIPPED.values()}):
        print(write_manifest(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
