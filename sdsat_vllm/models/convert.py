"""GGUF -> a plain Hugging Face directory (bf16 ``model.safetensors`` + ``config.json`` + tokenizer
files with the chat template) that transformers and vLLM both load.

torch, transformers and gguf are imported only inside :func:`convert_gguf`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .errors import ModelFetchError
from .progress import progress_bar

__all__ = ["convert_gguf"]


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
    bar = progress_bar(len(steps) if check else len(steps) - 1, f"convert {gguf_path.name}", progress, unit="step")
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
