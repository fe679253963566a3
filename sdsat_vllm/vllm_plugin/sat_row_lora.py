"""The gate of a gated SDSAT model inside vLLM's own model: the adapter's LoRA delta on SAT rows only.

vLLM can serve a gated model's adapter with its LoRA layers (patches `gated_enable_lora`,
`gated_lora_mapping`): they shard with the weights and run punica kernels on a GPU, but on a CPU they
cost ~40% of a forward before any delta is computed (benchmarks/results 7.1), Python work per call in
each of the 30 x 7 wrapped layers. The `rows` gate instead leaves LoRA off and puts a forward hook on
every linear layer the adapter targets, which adds the delta where the input token is a SAT:

    out = where(is_sat[:N], out + (x @ A) @ B, out)        x: [N, in], out: [N, out], is_sat: [N, 1]

`where`, not a multiply, so a standard row is the base layer's output itself, bit for bit (the rule of
the training gate, training/gated.py). vLLM's packed layers (qkv_proj, gate_up_proj) take their parts'
adapters side by side: the A matrices stacked, the B matrices block-diagonal, alpha / r folded into B.
The step's SAT mask is written in place before every forward (a pre-hook on the top model, which the
runner calls eagerly with the step's input_ids) into one buffer that every hooked layer holds: no
shape depends on the data, and a compiled model reads the buffer as an input, so it never recompiles.

Where: option `gate` (`sdsat_gate`): "auto" takes `rows` on a CPU with one tensor-parallel rank and
vLLM's LoRA layers elsewhere (a sharded layer sees a shard of x or of out, and a GPU's LoRA kernels are
the path vLLM is built for); "rows" and "lora" choose.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

#: peft's prefix of a LoRA adapter's keys, and the suffixes of its matrices
PEFT_PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
MASK, LORA_A, LORA_B = "sdsat_sat_mask", "sdsat_lora_a", "sdsat_lora_b"  # buffers on each hooked layer

logger = logging.getLogger(__name__)


def gate_path(option: str, tensor_parallel_size: int, pipeline_parallel_size: int = 1, on_cpu: bool | None = None,
              lora_enabled: bool = False) -> str:
    """"rows" or "lora": how a gated model's SAT tokens get their adapter on this engine. lora_enabled: the
    user turned vLLM's LoRA on (its layers then wrap the model's, and the gate goes through them)."""
    from .options import check_gate

    check_gate(option)  # options.validate_options says so first, with the other options
    if on_cpu is None:
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
    sharded = tensor_parallel_size > 1 or pipeline_parallel_size > 1
    if option == "rows" and sharded:
        raise ValueError(f"sdsat gate 'rows' serves an unsharded model (tensor and pipeline parallel size 1); this "
                         f"engine has {tensor_parallel_size} x {pipeline_parallel_size}: use gate 'lora' or 'auto'")
    if option == "rows" and lora_enabled:
        raise ValueError("sdsat gate 'rows' keeps vLLM's LoRA off, but this engine enables it: leave enable_lora "
                         "out, or use gate 'lora' or 'auto'")
    if option == "auto":
        return "rows" if on_cpu and not sharded and not lora_enabled else "lora"
    return option


def sat_row_mask(input_ids, sat_ids):
    """[N] bool: which of the step's tokens are SATs. input_ids: [N] int; sat_ids: [U] int."""
    import torch

    return torch.isin(input_ids, sat_ids)


def _adapter_deltas(lora_dir: Path) -> tuple[dict[str, tuple[Any, Any]], float]:
    """({peft module name: (A [r, in], B [out, r])}, alpha / r) of a plain peft LoRA adapter."""
    from safetensors.torch import load_file

    cfg = json.loads((lora_dir / "adapter_config.json").read_text())
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    tensors = load_file(lora_dir / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if key.endswith(A_SUFFIX):
            name = key[: -len(A_SUFFIX)].removeprefix(PEFT_PREFIX)
            b = tensors.get(key[: -len(A_SUFFIX)] + B_SUFFIX)
            if b is None:
                raise ValueError(f"{lora_dir}: {key} has no {B_SUFFIX} beside it")
            out[name] = (a, b)
    if not out:
        raise ValueError(f"{lora_dir} holds no LoRA matrices")
    return out, scale


def install_sat_row_lora(model, lora_dir: str | Path, sat_ids, max_tokens: int) -> int:
    """Hook the gate into `model` (vLLM's top model, e.g. LlamaForCausalLM, weights loaded) in place.

    Returns the number of hooked layers. Fails loudly when an adapter matrix has no layer to go to, a
    layer's shape disagrees, or the model is already hooked: a drafter half installed would draft badly
    without a word (the output would still be exact: vLLM verifies every draft)."""
    import torch

    if getattr(model, "_sdsat_sat_row_lora", None) is not None:
        raise ValueError("this model already has the SAT-row gate")
    deltas, scale = _adapter_deltas(Path(lora_dir))
    packed = dict(getattr(model, "packed_modules_mapping", None) or {})  # vLLM's layer -> the adapter's parts
    modules = dict(model.named_modules())
    weight = next(model.parameters())
    mask = torch.zeros(max_tokens, 1, dtype=torch.bool, device=weight.device)
    ids = torch.tensor(sorted(set(int(i) for i in sat_ids)), dtype=torch.long, device=weight.device)
    used, hooked = set(), 0
    for name, module in modules.items():
        parent, _, leaf = name.rpartition(".")
        parts = [f"{parent}.{p}" if parent else p for p in packed.get(leaf, [leaf])]
        if not all(p in deltas for p in parts):
            if any(p in deltas for p in parts):
                raise ValueError(f"the gated adapter covers only part of vLLM's packed layer {name} "
                                 f"({[p for p in parts if p in deltas]} of {parts})")
            continue
        # vLLM's linear layers (LinearBase) know their sizes; the CPU backend may repack `weight` away
        n_in, n_out = getattr(module, "input_size_per_partition", None), getattr(module, "output_size_per_partition", None)
        if n_in is None or n_out is None:
            raise ValueError(f"the gated adapter targets {name}, which is not a linear layer in vLLM's model")
        a = torch.cat([deltas[p][0] for p in parts], 0)                     # [S*r, in]
        b = torch.block_diag(*[deltas[p][1] for p in parts]) * scale      # [out, S*r]
        if a.shape[1] != n_in or b.shape[0] != n_out:
            raise ValueError(f"the gated adapter's matrices for {name} map {a.shape[1]} -> {b.shape[0]}, the layer "
                             f"{n_in} -> {n_out} (a sharded layer? the rows gate needs tensor parallel 1)")
        dtype = getattr(module, "params_dtype", None) or weight.dtype
        module.register_buffer(LORA_A, a.t().contiguous().to(dtype).to(weight.device), persistent=False)  # [in, S*r]
        module.register_buffer(LORA_B, b.t().contiguous().to(dtype).to(weight.device), persistent=False)  # [S*r, out]
        module.register_buffer(MASK, mask, persistent=False)  # one tensor shared by every hooked layer
        module.register_forward_hook(_add_sat_row_delta)
        used.update(parts)
        hooked += 1
    missing = sorted(set(deltas) - used)
    if missing:
        raise ValueError(f"the gated adapter's matrices for {missing[:3]} ({len(missing)} layers) match no layer of "
                         f"vLLM's {type(model).__name__}")

    def set_mask(_module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:  # embeddings given instead of ids: no SAT can be told apart, so no delta
            mask.zero_()
            logger.warning("SDSAT rows gate: a forward without input_ids; the SATs draft without their adapter")
            return
        n = input_ids.shape[0]
        if n > mask.shape[0]:
            raise ValueError(f"SDSAT rows gate: a forward of {n} tokens, sized for {mask.shape[0]}")
        mask[:n, 0] = sat_row_mask(input_ids, ids)

    model.register_forward_pre_hook(set_mask, with_kwargs=True)
    model._sdsat_sat_row_lora = hooked
    return hooked


def _add_sat_row_delta(module, args, output):
    """out = where(is_sat, out + (x @ A) @ B, out) on a vLLM linear layer's (output, bias) or output."""
    import torch

    x = args[0]                                                     # [N, in]
    out = output[0] if isinstance(output, tuple) else output        # [N, out]
    is_sat = getattr(module, MASK)[: x.shape[0]]                    # [N, 1]
    delta = (x @ getattr(module, LORA_A)) @ getattr(module, LORA_B)  # [N, out]
    gated = torch.where(is_sat, out + delta, out)
    return (gated, *output[1:]) if isinstance(output, tuple) else gated
