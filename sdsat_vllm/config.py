"""The `sdsat` block of a model's config.json: the one truth every consumer reads.

A model that drafts for itself carries, in config.json::

    "sdsat": {"sat_token_ids": [49152, 49152, 49152, 49152, 49152], "num_sat": 5,
              "train_mode": "lora", "base_model": "smollm2-135m", "base_sha256": "b179..."}

`sat_token_ids[j]` is the token appended at SAT offset j (0-based). One reserved id repeated K
times is the reference's choice; K distinct ids work too. The training code writes this block, the
decoding engine, the vLLM plugin and the benchmarks read it, and nothing else is passed around.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRAIN_MODES = ("full", "lora", "frozen", "gated")
CONFIG_KEY = "sdsat"
#: Inside a served gated model directory: the adapter's LoRA matrices alone, as a plain peft LoRA
#: adapter for vLLM's loader (training/gated.py writes it, the vLLM plugin loads it).
GATED_VLLM_LORA_DIR = "sdsat_vllm_lora"


class SDSATConfigError(ValueError):
    """The `sdsat` block is missing or malformed."""


@dataclass(slots=True, frozen=True)
class SDSATConfig:
    sat_token_ids: tuple[int, ...]
    train_mode: str = "lora"
    base_model: str | None = None
    base_sha256: str | None = None
    sat_token_texts: tuple[str, ...] = field(default=())

    def __post_init__(self):
        ids = tuple(int(i) for i in self.sat_token_ids)
        object.__setattr__(self, "sat_token_ids", ids)
        object.__setattr__(self, "sat_token_texts", tuple(self.sat_token_texts))
        if not ids:
            raise SDSATConfigError("sdsat.sat_token_ids is empty: at least one SAT is needed")
        if any(i < 0 for i in ids):
            raise SDSATConfigError(f"sdsat.sat_token_ids must be non-negative token ids, got {list(ids)}")
        if self.train_mode not in TRAIN_MODES:
            raise SDSATConfigError(f"sdsat.train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")

    @property
    def num_sat(self) -> int:
        """K: how many SATs follow a sequence, i.e. how many tokens one SAT block drafts."""
        return len(self.sat_token_ids)

    @property
    def sat_id_set(self) -> frozenset[int]:
        return frozenset(self.sat_token_ids)

    def sat_ids_for(self, k: int) -> tuple[int, ...]:
        """The first k SAT ids (a model trained with K SATs can draft with any k <= K)."""
        if not 1 <= k <= self.num_sat:
            raise SDSATConfigError(
                f"num_sat={k} is out of range: this model was trained with K={self.num_sat} SATs "
                f"(use 1..{self.num_sat})"
            )
        return self.sat_token_ids[:k]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sat_token_ids"] = list(self.sat_token_ids)
        d["sat_token_texts"] = list(self.sat_token_texts)
        d["num_sat"] = self.num_sat
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SDSATConfig":
        if not isinstance(d, dict):
            raise SDSATConfigError(f"the '{CONFIG_KEY}' block must be a JSON object, got {type(d).__name__}")
        if "sat_token_ids" not in d:
            raise SDSATConfigError(f"the '{CONFIG_KEY}' block has no 'sat_token_ids'")
        ids = d["sat_token_ids"]
        if isinstance(ids, int):
            ids = [ids] * int(d.get("num_sat", 1))
        num_sat = d.get("num_sat")
        if num_sat is not None and int(num_sat) != len(ids):
            raise SDSATConfigError(f"sdsat.num_sat={num_sat} but sat_token_ids has {len(ids)} entries")
        known = {"sat_token_ids", "train_mode", "base_model", "base_sha256", "sat_token_texts"}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> "SDSATConfig":
        """From a transformers PretrainedConfig (or any object/dict carrying the block)."""
        block = hf_config.get(CONFIG_KEY) if isinstance(hf_config, dict) else getattr(hf_config, CONFIG_KEY, None)
        if block is None:
            name = getattr(hf_config, "_name_or_path", None) or "this model"
            raise SDSATConfigError(
                f"{name} has no '{CONFIG_KEY}' block in its config.json, so it has no SAT tokens to draft with. "
                "Train one with `sdsat train`, or apply a trained adapter with `sdsat apply-adapter`."
            )
        return cls.from_dict(block)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> "SDSATConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise SDSATConfigError(f"{path} does not exist: not a Hugging Face model directory")
        with open(path) as f:
            cfg = json.load(f)
        if CONFIG_KEY not in cfg:
            raise SDSATConfigError(
                f"{path} has no '{CONFIG_KEY}' block, so the model has no SAT tokens to draft with. "
                "Train one with `sdsat train`, or apply a trained adapter with `sdsat apply-adapter`."
            )
        return cls.from_dict(cfg[CONFIG_KEY])

    def save_to(self, model_dir: str | os.PathLike) -> None:
        """Merge this block into model_dir/config.json (written atomically)."""
        path = Path(model_dir) / "config.json"
        with open(path) as f:
            cfg = json.load(f)
        cfg[CONFIG_KEY] = self.to_dict()
        write_json_atomic(path, cfg)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def gated_vllm_lora(model_dir: str | os.PathLike) -> tuple[Path, int]:
    """(directory, rank) of a served gated model's vLLM LoRA view; SDSATConfigError saying what to
    do when the directory lacks it (built before it existed, or damaged)."""
    lora_dir = Path(model_dir) / GATED_VLLM_LORA_DIR
    try:
        rank = int(json.loads((lora_dir / "adapter_config.json").read_text())["r"])
        if not (lora_dir / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(lora_dir / "adapter_model.safetensors")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SDSATConfigError(
            f"{model_dir} is a gated SDSAT model, but its vLLM LoRA view {GATED_VLLM_LORA_DIR}/ is missing or "
            f"unreadable ({type(e).__name__}: {e}); rebuild the directory with `sdsat fetch NAME` or "
            f"`sdsat apply-adapter BASE ADAPTER OUT`") from None
    return lora_dir, rank
