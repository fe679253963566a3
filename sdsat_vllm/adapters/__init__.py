"""Trained SDSAT adapters that ship inside the package, and the models they rebuild.

An adapter directory (written by `sdsat train`, see training/export.py) holds the LoRA matrices and
the SAT embedding rows. `resolve_sdsat_model("smollm2-135m-sdsat")` fetches the base model, applies
the adapter once, and caches the merged HF directory next to the base models, so that
`vllm serve $(sdsat fetch smollm2-135m-sdsat) ...` works on a fresh machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

ADAPTER_ROOT = Path(__file__).resolve().parent


@dataclass(slots=True, frozen=True)
class ShippedAdapter:
    name: str  # what users type
    base: str  # a known base model name (sdsat_vllm.models)
    adapter_dir: str  # folder under sdsat_vllm/adapters/

    @property
    def path(self) -> Path:
        return ADAPTER_ROOT / self.adapter_dir


SHIPPED = {a.name: a for a in [
    ShippedAdapter("smollm2-135m-sdsat", "smollm2-135m", "smollm2-135m-lora-k5"),
]}
DEFAULT_SDSAT_MODEL = "smollm2-135m-sdsat"


def resolve_sdsat_model(name: str, cache_dir=None) -> Path:
    """HF directory of a shipped SDSAT model (built from base + adapter once, then cached)."""
    from ..models import cache_root, resolve_model
    from ..training.export import apply_adapter

    if name not in SHIPPED:
        raise KeyError(f"unknown SDSAT model {name!r}; shipped: {sorted(SHIPPED)}")
    spec = SHIPPED[name]
    # Keyed by the adapter's hash: a newer shipped adapter never reuses an old merged model.
    digest = hashlib.sha256((spec.path / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
    out = cache_root(cache_dir) / f"{name}-{digest}"
    if (out / "config.json").is_file():
        return out
    base_dir = resolve_model(spec.base, cache_dir=cache_dir)
    return apply_adapter(str(base_dir), spec.path, out)
