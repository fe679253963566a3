"""`sdsat train`: every TrainConfig / DataConfig field is a flag (--lora-r, --seq-len, ...), so the
flags can never drift from the config they fill. Re-running the same command resumes the run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .data import DataConfig
from .trainer import TrainConfig

HELP = {
    "model": "a known model name (see `sdsat fetch`), an HF directory or a GGUF file",
    "output_dir": "run directory: config, log.jsonl, checkpoint/, then model/ and adapter/",
    "mode": "full | lora | frozen | gated (LoRA on SAT rows only: the base model stays bit for bit)",
    "sources": "training files or directories (.py/.txt/.md/.jsonl); default: the stdlib source",
    "heldout_sources": "evaluation files or directories; default: a stable hash split of --sources (--heldout-fraction)",
}


def _add_fields(parser, cls, skip=(), required=("model", "output_dir"), help=None):
    help = {**HELP, **(help or {})}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kw = {"default": default, "help": help.get(f.name, f"default: {default}")}
        if kind == "bool":
            kw["action"] = "store_false" if default else "store_true"
            flag = "--no-" + f.name.replace("_", "-") if default else flag
        elif kind.startswith("tuple"):
            kw["nargs"] = "*"
        elif "float" in kind:
            kw["type"] = float
        elif "int" in kind:
            kw["type"] = int
        if f.name in required:
            kw["required"] = True
        parser.add_argument(flag, dest=f.name, **kw)


def add_arguments(parser) -> None:
    _add_fields(parser, TrainConfig, skip=("data",))
    _add_fields(parser, DataConfig)


def config_from_args(args) -> TrainConfig:
    v = vars(args)
    data = DataConfig(**{f.name: v[f.name] for f in dataclasses.fields(DataConfig)})
    return TrainConfig(data=data, **{f.name: v[f.name] for f in dataclasses.fields(TrainConfig) if f.name != "data"})


def run(args) -> int:
    from .trainer import train

    cfg = config_from_args(args)
    out = train(cfg)
    print(json.dumps({"run": str(out), "model": str(Path(out) / "model"), "adapter": str(Path(out) / "adapter")}))
    return 0
