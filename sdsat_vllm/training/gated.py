"""Gated LoRA: LoRA deltas that apply only at rows whose input id is a SAT id (docs/design.md, section 3).

The `gated` train mode gives the SATs LoRA capacity while every standard token sees exactly the base
weights, so the served model is the base model bit for bit and SDSAT is lossless against the ORIGINAL
model (the `lora` mode merges its deltas into every weight, which changes the model's own answers).

Mechanism
- `GatedLoRALinear` replaces every linear layer of the decoder (every nn.Linear but the output head,
  peft's "all-linear"): base layer (frozen) + lora_A / lora_B (peft's initialisation and scaling
  alpha / r). Its output is the base layer's output, untouched, on every row that is not a SAT:
  `torch.where`, not a multiply by a 0/1 mask, so even an inf or NaN in the delta cannot reach a
  standard row; a forward without any SAT computes no delta at all.
- `SATGate` holds the rows of the current forward: a forward pre-hook on the causal LM reads its
  `input_ids` and sets a [B, T] mask (input id in the SAT ids) that every gated layer of that model
  reads. Every linear layer of a dense decoder sees the sequence's rows in order, [B, T, features],
  so the mask lines up; a layer that sees another shape (e.g. an MoE expert's token subset) is a
  clear error, not a silent broadcast.
- The SAT embedding rows train as in `frozen` mode (peft TrainableTokens during training, written
  into the embedding matrix for serving: new rows, never a base row).
- The base may itself be an SDSAT model (a merged `lora` one): the gate then trains on top of its
  drafter, from its SAT rows, and keeps its served model. Its SAT rows are the adapter's (the last
  rows of the vocabulary, left out of the base's digests); every other tensor is checked as usual.

Files
- Adapter directory (`RUN/adapter`, a shipped adapter): the `lora` adapter's layout exactly.
  adapter_config.json is a peft LoraConfig, adapter_model.safetensors has peft's keys (`...lora_A.weight`,
  `...lora_B.weight`, `...embed_tokens.token_adapter.trainable_tokens_delta`), so vLLM's or peft's
  LoRA loaders read it as they read a `lora` adapter; sdsat.json says `train_mode: gated` (the gate
  is the one thing those loaders do not know) and records the sha256 of every base tensor.
- Served model directory (`RUN/model`, `sdsat apply-adapter`, `sdsat fetch NAME-sdsat`): the base
  model's tensors unchanged (the SAT rows appended to the vocabulary, nothing merged), the `sdsat`
  block with `train_mode: gated`, the adapter copied into `sdsat_adapter/`, and its LoRA matrices
  alone in `sdsat_vllm_lora/` (a plain peft LoRA adapter: vLLM's LoRA loader refuses the SAT-row
  tensor, which the directory's embedding matrix already holds). The base tensors' sha256 are
  checked when the directory is built. `load_gated_dir` (the engine) attaches the gate; the vLLM
  plugin loads `sdsat_vllm_lora/` as a LoRA whose per-token mapping covers SAT tokens only
  (vllm_plugin/patches.py, `gated_lora_mapping`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import GATED_VLLM_LORA_DIR, SDSATConfig
from .export import ADAPTER_META, save_model_dir
from .sat_setup import sat_tokens_of

GATED_ADAPTER_DIR = "sdsat_adapter"  # the adapter, inside a served gated model directory
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft's key prefix: the gated adapter's keys are those of a peft LoRA adapter of the same model
PEFT_PREFIX = "base_model.model."


@dataclass(slots=True)
class SATGate:
    """Which rows of the current forward are SAT rows; shared by every gated layer of one model."""

    sat_ids: tuple[int, ...]  # sorted distinct SAT ids
    rows: torch.Tensor | None = None  # [B, T] bool, True at SAT rows; None: no SAT in this forward
    all_rows: bool = False  # every row is a SAT (training's SAT pass): the delta applies without a select
    hooks: tuple = field(default=(), repr=False)  # the hooks' handles, for remove_gated_lora

    def set_from_input_ids(self, input_ids: torch.Tensor | None) -> None:
        """input_ids: [B, T]."""
        if input_ids is None:
            self.rows, self.all_rows = None, False
            return
        rows = torch.isin(input_ids, torch.tensor(self.sat_ids, device=input_ids.device))
        if not bool(rows.any()):  # no SAT: the forward is the base model's, no delta computed
            self.rows, self.all_rows = None, False
        else:
            self.rows, self.all_rows = rows, bool(rows.all())

    def pre_hook(self, _module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None and kwargs.get("inputs_embeds") is not None:
            # the gate is defined by input ids; embeddings alone cannot say which rows are SATs
            raise ValueError("a gated SDSAT model needs input_ids (inputs_embeds alone cannot be gated)")
        self.set_from_input_ids(input_ids)

    def post_hook(self, _module, _args, _kwargs, _output):
        # The mask lives for one forward of the causal LM: a later call of an inner module alone (no
        # pre-hook) then computes the base model, never a stale mask.
        self.rows, self.all_rows = None, False


class GatedLoRALinear(nn.Module):
    """base(x), plus the LoRA delta on SAT rows only (the gate's rows)."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, gate: SATGate):
        super().__init__()
        # `base`, not peft's `base_layer`: peft would take this for one of its own layers when unloading
        self.base = base_layer
        w = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        # peft's default initialisation: the delta starts at exactly 0
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.gate = gate  # a plain attribute: shared, not a submodule, never in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, in_features]
        y = self.base(x)
        rows = self.gate.rows
        if rows is None:
            return y
        delta = (self.lora_B(self.lora_A(x)) * self.scaling).to(y.dtype)
        if self.gate.all_rows:
            return y + delta
        if rows.shape != x.shape[:-1]:
            raise RuntimeError(f"gated LoRA: this layer sees rows of shape {tuple(x.shape[:-1])}, the gate has "
                               f"{tuple(rows.shape)} (input ids): only layers that see every token in order "
                               "can be gated")
        return torch.where(rows[..., None], y + delta, y)


# ----------------------------------------------------------------------------------------------
# installing, removing, state


def gate_of(model) -> SATGate | None:
    """The SATGate of a causal LM with gated LoRA installed (or of a peft model around one)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "_sdsat_gate", None)


#: Linear layers vLLM serves as one packed layer (its Llama-family `packed_modules_mapping`): the rows gate
#: hooks the packed layer, so a gated adapter takes all of a group or none (sat_row_lora refuses a part).
PACKED_TOGETHER = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def check_gated_targets(targets) -> tuple[str, ...]:
    """The short names (q_proj, ...) a gated LoRA targets, sorted; () = every linear layer but the head.
    ValueError for a name that is not a plain layer name or a packed group taken in part."""
    targets = tuple(sorted(set(targets or ())))
    for t in targets:
        if not isinstance(t, str) or not t.isidentifier():
            raise ValueError(f"gated targets are linear layers' short names (q_proj, down_proj, ...), got {t!r}")
    for group in PACKED_TOGETHER:
        taken = [g for g in group if g in targets]
        if taken and len(taken) < len(group):
            raise ValueError(f"vLLM serves {', '.join(group)} as one packed layer: a gated adapter targets all of "
                             f"them or none (got {', '.join(taken)})")
    return targets


def install_gated_lora(model, sat_ids, r: int, alpha: float, targets=()) -> SATGate:
    """Replace the linear layers with a GatedLoRALinear (the delta starts at 0) and gate the model by its
    input ids: every linear layer but the output head, or those whose short name is in `targets`
    (check_gated_targets). In place; returns the gate."""
    if gate_of(model) is not None:
        raise ValueError("this model already has gated LoRA layers")
    targets = check_gated_targets(targets)
    head = model.get_output_embeddings()
    linear = {name: name.rsplit(".", 1)[-1] for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and m is not head}  # full name -> short name
    unknown = sorted(set(targets) - set(linear.values()))
    if unknown:
        raise ValueError(f"gated targets {unknown} name no linear layer of this model; it has "
                         f"{sorted(set(linear.values()))}")
    targets = [n for n, short in linear.items() if not targets or short in targets]
    if not targets:
        raise ValueError("no linear layers to gate in this model")
    gate = SATGate(tuple(sorted({int(i) for i in sat_ids})))
    for name in targets:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, GatedLoRALinear(getattr(owner, child), r, alpha, gate))
    gate.hooks = (model.register_forward_pre_hook(gate.pre_hook, with_kwargs=True),
                  model.register_forward_hook(gate.post_hook, with_kwargs=True, always_call=True))
    model._sdsat_gate = gate
    return gate


def remove_gated_lora(model):
    """Put the base linear layers back and drop the gate: the plain base model again. In place."""
    gate = gate_of(model)
    if gate is None:
        return model
    for name, m in list(model.named_modules()):
        if isinstance(m, GatedLoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, m.base)
    for handle in gate.hooks:
        handle.remove()
    del model._sdsat_gate
    return model


def gated_layers(model) -> dict[str, GatedLoRALinear]:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {n: m for n, m in inner.named_modules() if isinstance(m, GatedLoRALinear)}


def gated_lora_state(model) -> dict[str, torch.Tensor]:
    """The LoRA matrices under peft's adapter keys (`base_model.model.<layer>.lora_A.weight`), fp32."""
    out = {}
    for name, m in gated_layers(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().float().cpu().contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().float().cpu().contiguous()
    return out


@torch.no_grad()
def load_gated_lora_state(model, state: dict[str, torch.Tensor], extra_ok: bool = False) -> None:
    """Copy LoRA matrices (peft's keys) into the gated layers; every layer must get both, nothing left over
    (extra_ok: matrices for layers this model does not gate are left out: a warm start on fewer layers)."""
    layers = gated_layers(model)
    want = {f"{PEFT_PREFIX}{n}.lora_{ab}.weight" for n in layers for ab in "AB"}
    have = {k for k in state if ".lora_A." in k or ".lora_B." in k}
    if extra_ok:
        have &= want
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise ValueError(f"the adapter's LoRA layers do not match this model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for name, m in layers.items():
        for ab in "AB":
            t, dest = state[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"], getattr(m, f"lora_{ab}").weight
            if t.shape != dest.shape:
                raise ValueError(f"{name}.lora_{ab}: adapter shape {tuple(t.shape)}, model {tuple(dest.shape)}")
            dest.copy_(t)


def embedding_path(model) -> str:
    """Dotted path of the input embedding inside the causal LM, e.g. model.embed_tokens."""
    emb = model.get_input_embeddings()
    for name, m in model.named_modules():
        if m is emb:
            return name
    raise ValueError("could not find the input embedding module")


def sat_rows_key(model) -> str:
    """The `lora` adapter's key of the SAT embedding rows (peft's trainable tokens under a LoRA config)."""
    return f"{PEFT_PREFIX}{embedding_path(model)}.token_adapter.trainable_tokens_delta"


@torch.no_grad()
def set_sat_rows(model, sdsat: SDSATConfig, rows: torch.Tensor) -> None:
    """rows: [U, H] the trained embedding rows of the U distinct SAT ids, in sorted id order (peft's
    token_indices). Written into the embedding matrix: these rows are new, no base row changes."""
    ids = sorted(sdsat.sat_id_set)
    weight = model.get_input_embeddings().weight
    if rows.shape != (len(ids), weight.shape[1]):
        raise ValueError(f"SAT rows of shape {tuple(rows.shape)}, expected {(len(ids), weight.shape[1])}")
    weight[ids] = rows.to(weight.dtype).to(weight.device)


# ----------------------------------------------------------------------------------------------
# base tensors: recorded at training, checked whenever a served directory is built


def _tensor_sha256(t: torch.Tensor) -> str:
    # the bytes of the tensor in its dtype (bf16 included: viewed as bytes, not converted)
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def base_tensor_digests(model, dtype: torch.dtype, sat_ids=()) -> dict[str, dict]:
    """{name: {sha256, shape, dtype}} of every tensor of a base model (before SATs are added), in the
    dtype it is stored and served in. A tensor tied to an earlier one is recorded once, under the
    first name (the one save_pretrained keeps).

    sat_ids: the SATs a base already has (an SDSAT model under a gated adapter). Their rows are the
    adapter's to replace, so the vocabulary-sized tensors are recorded without them; they must be the
    vocabulary's last rows (as add_sat_tokens appends them), so that the record is a prefix."""
    vocab = model.get_input_embeddings().weight.shape[0]
    keep = min(sat_ids) if sat_ids else vocab
    if sorted(set(sat_ids)) != list(range(keep, vocab)):
        raise ValueError(f"the base's SAT ids {sorted(set(sat_ids))} are not the last rows of its vocabulary "
                         f"({vocab} rows): a gated adapter on it could not tell its base rows from its SAT rows")
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if keep < vocab and t.dim() >= 1 and t.shape[0] == vocab:
            t = t[:keep]
        out[name] = {"sha256": _tensor_sha256(t.to(dtype)), "shape": list(t.shape), "dtype": str(dtype).split(".")[-1]}
    return out


def _base_part(name: str, t: torch.Tensor, want: dict) -> torch.Tensor:
    """The base rows of a tensor: the SATs append rows to the vocabulary-sized ones."""
    shape = tuple(want["shape"])
    if tuple(t.shape) != shape and t.dim() == len(shape) and tuple(t.shape[1:]) == shape[1:] \
            and t.shape[0] > shape[0]:
        return t[: shape[0]]
    if tuple(t.shape) != shape:
        raise ValueError(f"base tensor {name}: shape {tuple(t.shape)}, the base had {shape}")
    return t


def check_digests(tensors, recorded: dict[str, dict], where: str) -> None:
    """tensors: name -> tensor (a mapping, or a callable name -> tensor | None). Raises unless every
    recorded base tensor is present with the recorded sha256 (its base rows, for resized ones)."""
    get = tensors if callable(tensors) else tensors.get
    bad = []
    for name, want in recorded.items():
        t = get(name)
        if t is None:
            bad.append(f"{name} missing")
            continue
        if str(t.dtype).split(".")[-1] != want["dtype"]:
            t = t.to(getattr(torch, want["dtype"]))
        if _tensor_sha256(_base_part(name, t, want)) != want["sha256"]:
            bad.append(f"{name} differs")
    if bad:
        raise ValueError(f"{where}: the base model's tensors are not the ones the gated adapter was trained on "
                         f"({len(bad)} of {len(recorded)}: {', '.join(bad[:3])})")


def check_base_tensors(model_dir: str | os.PathLike) -> None:
    """Check a served gated model directory: every base tensor in its safetensors files is bit for bit
    the base model's (sha256 recorded at training in sdsat_adapter/sdsat.json)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    recorded = read_adapter_meta(model_dir / GATED_ADAPTER_DIR)["gated"]["base_tensors"]
    files = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            files.update({k: f for k in h.keys()})

    def get(name):
        if name not in files:
            return None
        with safe_open(files[name], "pt") as h:
            return h.get_tensor(name)

    check_digests(get, recorded, str(model_dir))


# ----------------------------------------------------------------------------------------------
# adapter directory


def read_adapter_meta(adapter_dir: Path) -> dict:
    """sdsat.json of a gated adapter, checked."""
    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / ADAPTER_META
    if not meta_path.is_file() or not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{adapter_dir} is not an SDSAT adapter (needs {ADAPTER_META} and {ADAPTER_WEIGHTS})")
    meta = json.loads(meta_path.read_text())
    if meta.get("sdsat", {}).get("train_mode") != "gated" or "gated" not in meta:
        raise ValueError(f"{adapter_dir} is not a gated SDSAT adapter (train_mode "
                         f"{meta.get('sdsat', {}).get('train_mode')!r})")
    return meta


def save_gated_adapter(model, sat_rows: torch.Tensor, sdsat: SDSATConfig, cfg, base_tensors: dict,
                       out_dir: Path) -> Path:
    """Write the adapter directory atomically. model: the causal LM with gated LoRA layers (or a peft
    model around it); sat_rows: [U, H] the SAT embedding rows (sorted distinct ids)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from ..config import write_json_atomic

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = gated_layers(inner)
    first = next(iter(layers.values()))  # every layer has the same rank
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = gated_lora_state(inner)
    tensors[sat_rows_key(inner)] = sat_rows.detach().float().cpu().contiguous()
    save_file(tensors, tmp / ADAPTER_WEIGHTS)
    r, alpha = first.lora_A.weight.shape[0], cfg.lora_alpha
    if r != cfg.lora_r:
        raise ValueError(f"the gated layers have rank {r}, the config says {cfg.lora_r}")
    emb = embedding_path(inner).rsplit(".", 1)[-1]
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                      target_modules=sorted(layers),  # full module names, as peft writes for all-linear
                      trainable_token_indices={emb: sorted(sdsat.sat_id_set)}, inference_mode=True)
    lora.save_pretrained(tmp)
    peft_cfg = json.loads((tmp / "adapter_config.json").read_text())
    peft_cfg["base_model_name_or_path"] = cfg.model  # not this machine's cache path
    write_json_atomic(tmp / "adapter_config.json", peft_cfg)
    write_json_atomic(tmp / ADAPTER_META, {
        "sdsat": sdsat.to_dict(), "train_config": cfg.to_dict(), "distinct_sats": cfg.distinct_sats,
        "gated": {"rule": "LoRA deltas apply only at rows whose input id is a SAT id; standard tokens see the "
                          "base weights", "lora_r": r, "lora_alpha": alpha,
                  "base_tensors": base_tensors}})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def attach_gated_adapter(model, adapter_dir: str | os.PathLike) -> SATGate:
    """Install the gate and the adapter's LoRA matrices on a causal LM that already has its SAT tokens
    (a served gated directory, or a base after add_sat_tokens + set_sat_rows). In place."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    meta = read_adapter_meta(adapter_dir)
    sdsat = SDSATConfig.from_dict(meta["sdsat"])
    vocab = model.get_input_embeddings().weight.shape[0]
    if max(sdsat.sat_token_ids) >= vocab:
        raise ValueError(f"the model's vocabulary ({vocab} rows) has no SAT id {max(sdsat.sat_token_ids)}")
    tensors = load_file(adapter_dir / ADAPTER_WEIGHTS)
    gate = install_gated_lora(model, sdsat.sat_token_ids, meta["gated"]["lora_r"], meta["gated"]["lora_alpha"],
                              lora_targets(tensors))
    load_gated_lora_state(model, tensors)
    return gate


def lora_targets(tensors: dict) -> tuple[str, ...]:
    """The short names of the layers an adapter's LoRA matrices (peft keys) are for."""
    return tuple(sorted({k[: -len(".lora_A.weight")].rsplit(".", 1)[-1] for k in tensors
                         if k.endswith(".lora_A.weight")}))


def gated_base(base, adapter_dir: Path, model=None, tokenizer=None):
    """(model with SAT tokens and trained SAT rows, tokenizer, sdsat, stored dtype) from a base and a
    gated adapter, its base tensors checked against the adapter's record. No LoRA yet."""
    from safetensors.torch import load_file

    from .trainer import load_base

    meta = read_adapter_meta(adapter_dir)
    want = SDSATConfig.from_dict(meta["sdsat"])
    base_sha, dtype = None, None
    if model is None:
        model, tokenizer, _, base_sha, dtype = load_base(base)
    elif tokenizer is None:
        raise ValueError("a base model object needs its tokenizer")
    dtype = dtype or model.dtype
    if want.base_sha256 and base_sha and want.base_sha256 != base_sha:
        raise ValueError(f"adapter {adapter_dir} was trained on a base with sha256 {want.base_sha256}, "
                         f"but {base} has {base_sha}")
    check_digests(model.state_dict(), meta["gated"]["base_tensors"], f"base {base}")
    got = sat_tokens_of(model, tokenizer, want.num_sat, meta.get("distinct_sats", False), "gated",
                        want.base_model, want.base_sha256)
    if got.sat_token_ids != want.sat_token_ids:
        raise ValueError(f"base {base} gives SAT ids {list(got.sat_token_ids)}, the adapter expects "
                         f"{list(want.sat_token_ids)}: it was trained on a different tokenizer")
    set_sat_rows(model, want, load_file(Path(adapter_dir) / ADAPTER_WEIGHTS)[sat_rows_key(model)])
    return model, tokenizer, want, dtype


def load_gated_model(base, adapter_dir: str | os.PathLike, tokenizer=None):
    """(model, tokenizer, sdsat): a base (known name, HF directory, GGUF file, or a loaded model with
    its tokenizer) with a gated adapter, in memory, fp32, eval mode: the base tensors untouched, the
    SAT rows added, the LoRA deltas on SAT rows only."""
    is_model = not isinstance(base, (str, os.PathLike))
    model, tokenizer, sdsat, _ = gated_base("(a loaded model)" if is_model else os.fspath(base), Path(adapter_dir),
                                            model=base if is_model else None, tokenizer=tokenizer)
    attach_gated_adapter(model, adapter_dir)
    return model.eval(), tokenizer, sdsat


def save_gated_model_dir(model, tokenizer, sdsat: SDSATConfig, adapter_dir: Path, out_dir: Path,
                         dtype: torch.dtype) -> Path:
    """The served directory (atomically): model is the base with SAT tokens and rows, no LoRA layers.
    The adapter goes into sdsat_adapter/ and the written base tensors are checked before the directory
    appears."""
    if gate_of(model) is not None:
        raise ValueError("save the base with its SAT rows, not the gated model (remove_gated_lora first)")

    def finish(tmp: Path) -> None:
        shutil.copytree(adapter_dir, tmp / GATED_ADAPTER_DIR)
        write_vllm_lora(adapter_dir, tmp / GATED_VLLM_LORA_DIR)
        check_base_tensors(tmp)

    return save_model_dir(model, tokenizer, sdsat, out_dir, dtype=dtype, finish=finish)


def write_vllm_lora(adapter_dir: Path, out_dir: Path) -> Path:
    """The adapter's LoRA matrices as a plain peft LoRA adapter that vLLM's loader takes: the
    `lora_A`/`lora_B` tensors under peft's keys, and a config with the layers' short names
    (q_proj, ...), rank and alpha. Nothing else: the SAT rows live in the model's embedding."""
    from safetensors.torch import load_file, save_file

    from ..config import write_json_atomic

    meta = read_adapter_meta(adapter_dir)
    tensors = {k: v for k, v in load_file(Path(adapter_dir) / ADAPTER_WEIGHTS).items()
               if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    if not tensors:
        raise ValueError(f"{adapter_dir} has no LoRA matrices")
    short = list(lora_targets(tensors))
    out_dir.mkdir(parents=True)
    save_file(tensors, out_dir / ADAPTER_WEIGHTS)
    write_json_atomic(out_dir / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": meta["gated"]["lora_r"],
        "lora_alpha": meta["gated"]["lora_alpha"], "lora_dropout": 0.0, "bias": "none", "target_modules": short,
        "base_model_name_or_path": meta["sdsat"].get("base_model") or ""})
    return out_dir


def build_gated_model_dir(base: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, model=None,
                          tokenizer=None) -> Path:
    """`sdsat apply-adapter` / `sdsat fetch` for a gated adapter: base + SAT rows + the adapter beside."""
    model, tokenizer, sdsat, dtype = gated_base(base, Path(adapter_dir), model, tokenizer)
    return save_gated_model_dir(model, tokenizer, sdsat, Path(adapter_dir), Path(out_dir), dtype)


def load_gated_dir(model_dir: str | os.PathLike, **from_pretrained_kw):
    """A served gated directory as a transformers model with its gate (what the engine loads)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, **from_pretrained_kw)
    attach_gated_adapter(model, Path(model_dir) / GATED_ADAPTER_DIR)
    return model


def load_model_dir(model_dir: str | os.PathLike, **from_pretrained_kw):
    """Any SDSAT (or plain) model directory as a transformers model: a gated one with its gate (its SATs
    draft with their adapter), any other as it is. Without the gate a gated model is its base: exact,
    but its SATs draft nonsense, so every reader of SAT rows loads through here."""
    if is_gated_dir(model_dir):
        return load_gated_dir(model_dir, **from_pretrained_kw)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, **from_pretrained_kw)


def is_gated_dir(model_dir: str | os.PathLike) -> bool:
    try:
        return SDSATConfig.from_pretrained(model_dir).train_mode == "gated"
    except ValueError:  # no block, or not a model directory
        return False
