"""Export a trained run: an HF directory transformers and vLLM load as they are, and a small adapter.

The adapter is a peft adapter directory (adapter_config.json + adapter_model.safetensors: the LoRA
matrices and the SAT embedding rows) plus sdsat.json (the `sdsat` block, the base model's id and
sha256, the training config). `sdsat apply-adapter BASE ADAPTER OUT` turns it back into the same
HF directory that training exported: the same SAT ids, the same merged weights, bit for bit.
A `gated` adapter is never merged: its directory is the base model's tensors unchanged + the SAT rows
+ the adapter beside them (training/gated.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..config import SDSATConfig, write_json_atomic

ADAPTER_META = "sdsat.json"


def _merged(model):
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_model_dir(model, tokenizer, sdsat: SDSATConfig, out_dir: Path, dtype: torch.dtype | None = None,
                   finish: Callable[[Path], None] | None = None) -> Path:
    """Save atomically: the directory appears complete or not at all. finish(tmp) adds to (or checks)
    the directory before it appears; an exception there leaves nothing behind."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if dtype is not None:
            model = model.to(dtype)
        model.config.sdsat = sdsat.to_dict()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        sdsat.save_to(tmp)  # the block, even if this transformers version drops unknown config keys
        if finish is not None:
            finish(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_run(model, tokenizer, sdsat: SDSATConfig, cfg, out: Path, dtype: torch.dtype,
               base_tensors: dict | None = None) -> None:
    """out/adapter (not for full fine-tuning) and out/model, saved in `dtype` (the base's stored dtype).
    base_tensors (gated only): the base's tensor digests, recorded in the adapter and checked in model/."""
    if cfg.mode == "gated":
        _export_gated(model, tokenizer, sdsat, cfg, out, dtype, base_tensors)
        return
    if cfg.mode != "full":
        adapter = out / "adapter"
        tmp = out / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # save_embedding_layers=False: the resized vocabulary would otherwise make peft store the
        # whole embedding and lm_head (hundreds of MB); the SAT rows are in trainable_tokens_delta.
        model.save_pretrained(tmp, save_embedding_layers=False)
        peft_cfg = json.loads((tmp / "adapter_config.json").read_text())
        peft_cfg["base_model_name_or_path"] = cfg.model  # not this machine's cache path
        write_json_atomic(tmp / "adapter_config.json", peft_cfg)
        write_json_atomic(tmp / ADAPTER_META, {"sdsat": sdsat.to_dict(), "train_config": cfg.to_dict(),
                                                "distinct_sats": cfg.distinct_sats})
        shutil.rmtree(adapter, ignore_errors=True)
        tmp.rename(adapter)
    save_model_dir(_merged(model), tokenizer, sdsat, out / "model", dtype=dtype)


def _export_gated(model, tokenizer, sdsat: SDSATConfig, cfg, out: Path, dtype: torch.dtype,
                  base_tensors: dict | None) -> None:
    """adapter/ (LoRA + SAT rows, the `lora` layout) and model/ (the base unchanged + SAT rows + the
    adapter): the same directory `sdsat apply-adapter` builds from the base and adapter/."""
    from .gated import remove_gated_lora, save_gated_adapter, save_gated_model_dir, set_sat_rows

    if not base_tensors:
        raise ValueError("a gated export needs the base model's tensor digests")
    # peft's TrainableTokens delta: [U, H] the SAT rows, sorted distinct ids
    (sat_rows,) = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]  # tied: one param
    sat_rows = sat_rows.detach().float().clone()
    adapter = save_gated_adapter(model, sat_rows, sdsat, cfg, base_tensors, out / "adapter")
    remove_gated_lora(model.get_base_model())
    base = model.unload()  # the base model's own modules again, nothing merged
    set_sat_rows(base, sdsat, sat_rows)
    save_gated_model_dir(base, tokenizer, sdsat, adapter, out / "model", dtype)


def apply_adapter(base: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, model=None,
                  tokenizer=None) -> Path:
    """Rebuild the trained model from its base and a small adapter. model/tokenizer: an already
    loaded base (tests pass tiny models); otherwise `base` is resolved like `sdsat train --model`."""
    from peft import PeftModel

    from .sat_setup import add_sat_tokens
    from .trainer import load_base

    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / ADAPTER_META
    if not meta_path.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} is not an SDSAT adapter (needs {ADAPTER_META} and adapter_config.json)")
    meta = json.loads(meta_path.read_text())
    want = SDSATConfig.from_dict(meta["sdsat"])
    if want.train_mode == "gated":  # never merged: the base unchanged, the adapter beside it
        from .gated import build_gated_model_dir

        return _with_datastore(build_gated_model_dir(base, adapter_dir, out_dir, model=model, tokenizer=tokenizer),
                               adapter_dir)
    base_sha, dtype = None, None
    if model is None:
        model, tokenizer, _, base_sha, dtype = load_base(base)
    dtype = dtype or model.dtype
    if want.base_sha256 and base_sha and want.base_sha256 != base_sha:
        raise ValueError(f"adapter {adapter_dir} was trained on a base with sha256 {want.base_sha256}, "
                         f"but {base} has {base_sha}")
    got = add_sat_tokens(model, tokenizer, want.num_sat, meta.get("distinct_sats", False), want.train_mode,
                         want.base_model, want.base_sha256)
    if got.sat_token_ids != want.sat_token_ids:
        raise ValueError(f"base {base} gives SAT ids {list(got.sat_token_ids)}, the adapter expects "
                         f"{list(want.sat_token_ids)}: it was trained on a different tokenizer")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return _with_datastore(save_model_dir(merged, tokenizer, want, Path(out_dir), dtype=dtype), adapter_dir)


def _with_datastore(model_dir: Path, adapter_dir: Path) -> Path:
    """The adapter's datastore of the model's own text (sdsat_vllm/datastore.py), where it ships one,
    copied into the model directory, where the vLLM proposer looks for it."""
    from ..datastore import ADAPTER_FILE, MODEL_DIR_FILE

    src = Path(adapter_dir) / ADAPTER_FILE
    if src.is_file():
        dest = Path(model_dir) / MODEL_DIR_FILE
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return model_dir


def add_arguments(parser) -> None:
    parser.add_argument("base", help="base model: a known name (see `sdsat fetch`), HF directory or GGUF file")
    parser.add_argument("adapter", help="adapter directory written by `sdsat train` (RUN/adapter)")
    parser.add_argument("out", help="where to write the HF model directory (merged; for a gated adapter: the "
                                    "base unchanged with the adapter beside it)")


def run(args) -> int:
    print(apply_adapter(args.base, args.adapter, args.out))
    return 0
