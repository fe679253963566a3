"""Trained SDSAT adapters that ship inside the package, and the models they rebuild.

An adapter directory (written by `sdsat train`, see training/export.py) holds the LoRA matrices and
the SAT embedding rows. `resolve_sdsat_model("smollm2-135m-sdsat")` fetches the base model, applies
the adapter once, and caches the merged HF directory next to the base models, so that
`vllm serve $(sdsat fetch smollm2-135m-sdsat) ...` works on a fresh machine. A gated adapter
(`train_mode: gated` in its sdsat.json) is never merged: its cached directory is the base model's
tensors unchanged (their sha256, recorded in the adapter at training, checked when the directory is
built), the SAT rows, and the adapter in `sdsat_adapter/`, which the transformers engine loads with its
gate (training/gated.py) and the vLLM plugin serves as a LoRA on SAT tokens only (issue 9). A gated
adapter's base may be a shipped SDSAT model (its drafter and served model kept, the gate on top): that
model is built first, and its adapter's digests are part of what the gated one's marker must say.

Integrity: each adapter directory pins its files' sha256 in `SHA256SUMS` (adapters/manifest.py),
checked before a model is built or served: a damaged adapter is refused, naming the file. The built
directory is staged next to its cache entry and moved into place with a marker (written last) holding
every file's size and sha256 and the adapter's digests (models/cache.py); a reused entry is checked
against it (sha256 once per process) and rebuilt, with a line saying why, when anything differs.

`resolve_model` here is `sdsat_vllm.models.resolve_model` plus the shipped names: what code that
takes a model name from a user calls (the demo, `sdsat generate`, the benchmarks). This package sits
above the model hub and the training code (it uses both) and below decoding; the model hub does
not import it. Importing it registers the shipped names with the model hub
(`sdsat_vllm.models.register_name`), so that lower layers that take a model name from a user (the
trainer's `load_base`, `sdsat make-data`) accept them too in a program that imported this package;
the `sdsat` command always does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..models.cache import commit, reusable, staging, write_marker

ADAPTER_ROOT = Path(__file__).resolve().parent

__all__ = ["ADAPTER_ROOT", "DEFAULT_SDSAT_MODEL", "SHIPPED", "ShippedAdapter", "resolve_model", "resolve_sdsat_model"]


@dataclass(slots=True, frozen=True)
class ShippedAdapter:
    name: str  # what users type
    base: str  # a known base model name (sdsat_vllm.models), or a shipped SDSAT model under a gated adapter
    adapter_dir: str  # folder under sdsat_vllm/adapters/

    @property
    def path(self) -> Path:
        return ADAPTER_ROOT / self.adapter_dir


SHIPPED = {a.name: a for a in [
    # the default: -sd3 continued 180 steps on its code data + the model's own answers to general
    # questions (builtin:questions; benchmarks/results/README.md, section 15); its prose answers repeat
    # themselves more than the base model's (section 16.1)
    ShippedAdapter("smollm2-135m-sdsat", "smollm2-135m", "smollm2-135m-lora-k5-sd4"),
    # -sd4 continued 89 steps (91k standard tokens) on its own answers to both built-in question sets +
    # the code rows, with --std-target init (the standard positions keep -sd4's distribution; results 31)
    ShippedAdapter("smollm2-135m-sdsat-sd7", "smollm2-135m", "smollm2-135m-lora-k5-sd7"),
    # -sd7 continued 90 steps on the same rows cut to their prompt + the first 64 answer tokens, SAT blocks
    # only where serving drafts (--sat-blocks drafted --max-answer-tokens 64; results 33)
    ShippedAdapter("smollm2-135m-sdsat-sd8", "smollm2-135m", "smollm2-135m-lora-k5-sd8"),
    # a gated LoRA on top of the default: serves the default's model bit for bit (the delta applies at SAT
    # rows only; vLLM's rows gate on a CPU), trained 300 steps with -sd8's flags (results 34.2, 36); the
    # default's datastore ships beside it (same served model, same text)
    ShippedAdapter("smollm2-135m-sdsat-g1", "smollm2-135m-sdsat", "smollm2-135m-gated-k5-g1"),
    # -sd4 continued 180 steps with --std-target base (the standard positions learn the base model's
    # distribution): prose loops and the merge's perplexity cost mostly undone, but it answers
    # HumanEval-style prompts with "# Example usage" lists (sections 16.2-16.3)
    ShippedAdapter("smollm2-135m-sdsat-sd5", "smollm2-135m", "smollm2-135m-lora-k5-sd5"),
    # the previous default: warm-started from the stdlib adapter, then 240 steps on the model's own code
    # completions (no EOS target after a completion cut by max_tokens; results, sections 6-7)
    ShippedAdapter("smollm2-135m-sdsat-sd3", "smollm2-135m", "smollm2-135m-lora-k5-sd3"),
    # the previous default (stdlib source only), kept to compare against and as the warm start
    ShippedAdapter("smollm2-135m-sdsat-stdlib", "smollm2-135m", "smollm2-135m-lora-k5"),
]}
DEFAULT_SDSAT_MODEL = "smollm2-135m-sdsat"


def resolve_sdsat_model(name: str, cache_dir=None) -> Path:
    """HF directory of a shipped SDSAT model (built from base + adapter once, then cached): merged for a
    `lora` adapter, the base unchanged + the adapter beside it for a `gated` one (apply_adapter's branch).

    The adapter is checked against its SHA256SUMS first (AdapterIntegrityError on a mismatch); a cached
    directory is served only if its marker and files check out, else it is rebuilt."""
    from .manifest import verify_adapter

    if name not in SHIPPED:
        raise KeyError(f"unknown SDSAT model {name!r}; shipped: {sorted(SHIPPED)}")
    spec = SHIPPED[name]
    digests = verify_adapter(spec.path)
    # Keyed by the adapter weights' hash: a newer shipped adapter never reuses an old built model (and
    # the marker's adapter digests catch a change to its other files).
    out = models.cache_root(cache_dir) / f"{name}-{digests['adapter_model.safetensors'][:12]}"
    expect = _built_from(spec, digests)
    if reusable(out, expect):
        return out
    return _build(spec, out, expect, cache_dir)


def _built_from(spec: ShippedAdapter, digests: dict[str, str]) -> dict:
    """What a built directory's marker must say: this adapter's files and base (the base's GGUF pin when
    it is a known model, so that a new pin rebuilds it too)."""
    from .manifest import verify_adapter

    source = models.pins.KNOWN_MODELS.get(spec.base.strip().lower())
    built = {"name": spec.name, "base": spec.base, "base_gguf_sha256": source.gguf_sha256 if source else None,
             "adapter_sha256": digests}
    if spec.base in SHIPPED:  # a gated adapter on a shipped SDSAT model: a new adapter under it rebuilds this one
        under = SHIPPED[spec.base]
        built["base_built_from"] = _built_from(under, verify_adapter(under.path))
    return built


def _build(spec: ShippedAdapter, out: Path, expect: dict, cache_dir) -> Path:
    """Base + adapter into a work directory beside `out`, marker written last, moved into place."""
    from ..training.export import apply_adapter

    base_dir = resolve_model(spec.base, cache_dir=cache_dir)  # a shipped SDSAT model too (under a gated adapter)
    with staging(out.parent, out.name) as work:
        built = apply_adapter(str(base_dir), spec.path, work / "hf")
        write_marker(built, {**expect, "adapter_dir": spec.adapter_dir})
        commit(built, out, work, expect)
    return out


def resolve_model(
    name_or_path: str | os.PathLike, *, cache_dir: os.PathLike | str | None = None, force: bool = False,
    progress: bool = True,
) -> Path:
    """Turn a model reference into a local HF directory: a shipped SDSAT model name (``SHIPPED``) is
    built from its base model and adapter once, then served from the cache; anything else goes to
    :func:`sdsat_vllm.models.resolve_model` (a known base model name, an HF directory, a .gguf file)."""
    text = os.fspath(name_or_path)
    if text in SHIPPED and not Path(text).expanduser().exists():
        return resolve_sdsat_model(text, cache_dir=cache_dir)
    return models.resolve_model(name_or_path, cache_dir=cache_dir, force=force, progress=progress)


for _a in SHIPPED.values():
    models.register_name(_a.name, resolve_sdsat_model, group="shipped SDSAT models",
                         description=f"{_a.base} + the shipped SDSAT adapter {_a.adapter_dir}")
del _a
