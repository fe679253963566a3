"""SAT training (docs/design.md, section 3) on transformers + peft.

Modes
- full:   every weight trains (the paper's setting).
- lora:   peft LoRA on every linear layer + the SAT embedding rows; merged on export.
- frozen: only the SAT embedding rows train, so standard-token logits stay those of the base
          model and SDSAT is lossless against the ORIGINAL model. The standard tokens' K/V do
          not depend on anything trainable, so they are computed once without grad and only the
          SAT tokens are back-propagated: a step costs little more than a forward.
- gated:  LoRA on every linear layer applied only at rows whose input id is a SAT id (gated.py),
          + the SAT embedding rows: the SATs get LoRA capacity, standard tokens still see exactly
          the base weights, so the standard pass runs without grad as in `frozen`. Exported as an
          adapter beside the unchanged base, never merged. The base may be an SDSAT model (a merged
          `lora` one, e.g. the shipped default): its SATs and trained rows are where the run starts, its
          served model stays bit for bit, the gate's LoRA gives its SATs more capacity (results 34.2).
- lora + freeze_lora (with init_adapter): `frozen` on top of a `lora` adapter: its LoRA stays as
          loaded, only the SAT rows train (benchmarks/results 34.1: on -sd4 that bought nothing).

Loss: standard-token loss + sat_loss_weight * CE(SAT tokens). The standard-token loss (`lora`,
`full`) is CE on the data's tokens (std_target "data") or the KL divergence from the base model's own
distribution at every standard position (std_target "base", `lora` only: the same network with the
LoRA switched off is the base), or from the warm-start model's (std_target "init", `lora` with
init_adapter: a frozen copy of the network as it was loaded, so a continuation of a shipped adapter
keeps answering as that adapter's model does while its SATs learn more). A merged `lora` model is
what users get from plain decoding, so "data" lets the answers drift towards the training text:
trained on the served model's own greedy answers it drifts towards its own loops, and each round of
self-distillation compounds that (benchmarks/results 16); "base" pulls the answers back towards the base model's and leaves the
LoRA to the SATs (how close a run gets is measured, not given: `std_agree_base`, measure_merge.py).
The numbers to watch are the SAT accuracy per offset j (logged per step and on held-out files),
which predicts draft acceptance, and on held-out rows `std_agree_base`, the share of standard
positions where the trained model's argmax is the base model's (1.0: greedy answers unchanged).

A run lives in one output directory: train_config.json (the resolved config), log.jsonl,
checkpoint/ (resumable: a session may be stopped at any time), and on completion model/ (an HF
directory transformers and vLLM load as is) and adapter/ (small: LoRA + SAT rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TRAIN_MODES, SDSATConfig, write_json_atomic
from .data import DataConfig, TokenRows, load_datasets
from .layout import IGNORE_INDEX, SATBatch, build_sat_batch, sample_insertion_points
from .sat_setup import sat_tokens_of

# Changing these between a checkpoint and a resume does not change what the run computes.
RESUMABLE_CHANGES = {"steps", "max_minutes", "eval_every", "save_every", "log_every", "threads", "export", "device"}


@dataclass(slots=True, frozen=True)
class TrainConfig:
    model: str  # a known model name (see `sdsat fetch`), an HF directory or a GGUF file
    output_dir: str
    mode: str = "lora"
    num_sat: int = 5
    distinct_sats: bool = False  # K distinct SAT ids instead of one id repeated K times
    blocks_per_seq: int = 24  # M SAT blocks appended to every training sequence
    batch_size: int = 4
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 5e-4
    sat_lr: float = 2e-3  # SAT embedding rows learn faster than the LoRA weights
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    sat_loss_weight: float = 1.0
    target: str = "hard"  # SAT label: hard = the data's token; soft = the model's own distribution there
    # standard-token loss: data = CE on the data; base = KL from the base model (lora); init = KL from the
    # warm-start model (lora + init_adapter: a continuation keeps the served model's answers)
    std_target: str = "data"
    offset_weights: tuple[float, ...] = ()  # loss weight of SAT offset 1..K (empty: all equal)
    # where SAT blocks stand: all = anywhere in the packed rows; drafted = only where the next token is
    # drafted in serving (not in a make-data row's prompt, which serving prefills; results 32.2), in
    # training and in the held-out evaluation alike
    sat_blocks: str = "all"
    init_adapter: str | None = None  # warm start: LoRA + SAT rows of an adapter dir (e.g. the shipped one)
    # lora + init_adapter: the warm-start LoRA stays as loaded (not trained, not back-propagated), only
    # the SAT rows train: the served model is the init adapter's bit for bit, as `frozen` keeps the base
    freeze_lora: bool = False
    # r 8: rank 16 drafted no better per training token (benchmarks/results 8.1) and doubles the adapter
    lora_r: int = 8
    lora_alpha: int = 16
    # gated: the linear layers its LoRA targets, by short name (q_proj, ...); empty: every one but the head.
    # Each costs the rows gate two small matmuls a forward on a CPU (results 37.2); vLLM's packed groups
    # (q/k/v, gate/up) go whole (gated.PACKED_TOGETHER)
    gated_targets: tuple[str, ...] = ()
    dtype: str = "bf16"  # compute dtype (autocast); master weights stay fp32
    device: str = "auto"  # where the model trains: auto (cuda when there is one), cpu, cuda, cuda:N
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 50
    log_every: int = 10
    max_minutes: float | None = None  # checkpoint and stop cleanly after this much wall time
    threads: int | None = None
    export: bool = True

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {', '.join(TRAIN_MODES)}; got {self.mode!r}")
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype must be bf16 or fp32, got {self.dtype!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("num_sat", "blocks_per_seq", "batch_size", "grad_accum", "steps", "lora_r", "eval_every",
                     "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.target not in ("hard", "soft"):
            raise ValueError(f"target must be hard or soft, got {self.target!r}")
        if self.sat_blocks not in ("all", "drafted"):
            raise ValueError(f"sat_blocks must be all or drafted, got {self.sat_blocks!r}")
        if self.std_target not in ("data", "base", "init"):
            raise ValueError(f"std_target must be data, base or init, got {self.std_target!r}")
        if self.std_target in ("base", "init") and self.mode != "lora":
            raise ValueError(f"std_target {self.std_target} needs mode lora (the reference is the network with its "
                             f"LoRA off or as warm-started); mode {self.mode!r} "
                             f"{'has no standard-token loss' if self.mode in ('frozen', 'gated') else 'keeps no reference copy'}")
        if self.std_target == "init" and not self.init_adapter:
            raise ValueError("std_target init needs init_adapter (the model it keeps is the warm-started one)")
        object.__setattr__(self, "offset_weights", tuple(float(w) for w in self.offset_weights))
        if self.offset_weights and (len(self.offset_weights) != self.num_sat or min(self.offset_weights) < 0
                                    or sum(self.offset_weights) <= 0):
            raise ValueError(f"offset_weights needs K={self.num_sat} non-negative weights (not all 0), "
                             f"got {list(self.offset_weights)}")
        from .gated import check_gated_targets

        object.__setattr__(self, "gated_targets", check_gated_targets(self.gated_targets))
        if self.gated_targets and self.mode != "gated":
            raise ValueError(f"gated_targets chooses a gated LoRA's layers: it needs mode gated, got {self.mode!r}")
        if self.init_adapter and self.mode not in ("lora", "frozen", "gated"):
            raise ValueError("init_adapter warm-starts lora, frozen or gated runs only")
        if self.freeze_lora and (self.mode != "lora" or not self.init_adapter or self.std_target != "data"):
            raise ValueError("freeze_lora keeps a warm-started LoRA as loaded: it needs mode lora and init_adapter, "
                             f"and has no standard-token loss (std_target data); got mode {self.mode!r}, "
                             f"init_adapter {self.init_adapter!r}, std_target {self.std_target!r}")
        if self.data.seq_len < self.num_sat + 2:
            raise ValueError(f"seq_len {self.data.seq_len} is too short for K={self.num_sat}")

    @property
    def standard_tokens_fixed(self) -> bool:
        """True where nothing a standard token sees trains (frozen, gated, freeze_lora): their logits are
        the starting model's, so their K/V are computed without grad and they have no loss."""
        return self.mode in ("frozen", "gated") or self.freeze_lora

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        return cls(data=DataConfig(**(d.pop("data", None) or {})), **d)

    def torch_device(self) -> torch.device:
        """The device to train on (auto: the first GPU when torch sees one); a clear error for a GPU
        that is not there."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {self.device!r}: torch sees {torch.cuda.device_count()} CUDA device(s) "
                             f"(torch {torch.__version__}); use --device cpu or auto")
        return dev

    @property
    def offset_weight_tensor(self) -> torch.Tensor:
        """[K + 1] loss weight per SAT offset (index 0 unused)."""
        w = self.offset_weights or (1.0,) * self.num_sat
        return torch.tensor((0.0, *w))


# ----------------------------------------------------------------------------------------------
# model


def load_base(name_or_path: str):
    """(model in fp32, tokenizer, base_id, base_sha256, stored dtype) for a known name, HF directory
    or GGUF file. Training keeps fp32 master weights; export casts back to the stored dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..models import gguf_sha256, resolve_model

    model_dir = resolve_model(name_or_path)
    stored = AutoConfig.from_pretrained(model_dir).dtype or torch.float32
    stored = getattr(torch, stored) if isinstance(stored, str) else stored
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer, name_or_path, gguf_sha256(model_dir), stored


def make_trainable(model, sdsat: SDSATConfig, cfg: TrainConfig):
    """Wrap the model for its mode; returns (model, param_groups)."""
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model

    sat_ids = sorted(sdsat.sat_id_set)
    if cfg.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, [{"params": [p for p in model.parameters()], "lr": cfg.lr}]
    emb_name = _embedding_module_name(model)
    if cfg.mode == "gated":
        from .gated import install_gated_lora

        # Our own gated layers first (peft's LoRA cannot gate per row), then peft's TrainableTokens for
        # the SAT rows exactly as in `frozen` (tied output rows included).
        install_gated_lora(model, sat_ids, cfg.lora_r, cfg.lora_alpha, cfg.gated_targets)
        peft_cfg = TrainableTokensConfig(target_modules=[emb_name], token_indices=sat_ids)
    elif cfg.mode == "frozen":
        peft_cfg = TrainableTokensConfig(target_modules=[emb_name], token_indices=sat_ids)
    else:
        peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                              trainable_token_indices={emb_name: sat_ids})
    model = get_peft_model(model, peft_cfg)
    if cfg.mode == "gated" or cfg.freeze_lora:  # gated: peft froze every parameter not its own; train them
        for n, p in model.named_parameters():
            if ".lora_A." in n or ".lora_B." in n:
                p.requires_grad_(not cfg.freeze_lora)
    sat_params = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    other = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" not in n]
    groups = [{"params": sat_params, "lr": cfg.sat_lr}]
    if other:
        groups.append({"params": other, "lr": cfg.lr})
    return model, groups


def _embedding_module_name(model) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    raise ValueError("could not find the input embedding module")


# ----------------------------------------------------------------------------------------------
# loss


@dataclass(slots=True)
class StepStats:
    loss: float
    std_loss: float | None
    sat_loss: float
    sat_acc: list[float]  # per offset j = 1..K: SAT argmax == true token
    sat_agree: list[float] | None = None  # per offset: SAT argmax == the model's own argmax (draft acceptance proxy)
    # standard positions where the model's argmax is the reference's (lora: the base model's, or with
    # std_target init the warm-start model's)
    std_agree_base: float | None = None


def _mask_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype of the additive attention masks: the compute dtype."""
    return torch.bfloat16 if cfg.dtype == "bf16" else torch.float32


def _autocast(dtype: str, device_type: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _per_offset_mean(hits: torch.Tensor, offsets: torch.Tensor, K: int) -> list[float]:
    # hits: [N] float, offsets: [N] in 1..K
    sums = torch.zeros(K + 1).index_add_(0, offsets.cpu(), hits.float().cpu())
    counts = torch.zeros(K + 1).index_add_(0, offsets.cpu(), torch.ones_like(hits, dtype=torch.float).cpu())
    return (sums[1:] / counts[1:].clamp(min=1)).tolist()


def sat_forward_loss(model, batch: SATBatch, cfg: TrainConfig, with_agree: bool = False, reference=None):
    """(loss tensor, StepStats) for one laid-out batch. reference: the frozen warm-start model that
    std_target "init" keeps the standard positions at (None otherwise: the base is the LoRA switched off)."""
    batch = batch.to(next(model.parameters()).device)  # batches are built on the CPU (seeded generators)
    L, K = batch.num_standard, batch.num_sat
    B = batch.input_ids.shape[0]
    mask_dtype = _mask_dtype(cfg)
    sat_rows = slice(L, None)
    std_logits = None
    with _autocast(cfg.dtype, batch.input_ids.device.type):
        if cfg.standard_tokens_fixed:
            # Standard tokens see nothing trainable (gated: no SAT id among them, so no delta): their
            # K/V once, without grad; only the SAT rows are back-propagated.
            need_std = with_agree or cfg.target == "soft"
            with torch.no_grad():
                std_out = model(input_ids=batch.input_ids[:, :L], position_ids=batch.position_ids[:, :L],
                                use_cache=True, logits_to_keep=0 if need_std else 1)
            if need_std:
                std_logits = std_out.logits
            sat_logits = model(input_ids=batch.input_ids[:, sat_rows], position_ids=batch.position_ids[:, sat_rows],
                               attention_mask=batch.additive_mask(mask_dtype, sat_rows),
                               past_key_values=std_out.past_key_values, use_cache=False).logits
        else:
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           attention_mask=batch.additive_mask(mask_dtype), use_cache=False).logits
            std_logits, sat_logits = logits[:, :L], logits[:, L:]

    sat_labels = batch.labels[:, L:]
    # SAT j of block p drafts x_{p+j+1}; the standard position p+j predicts the same token.
    same_target = batch.position_ids[:, L:]  # [B, S]
    offsets = batch.sat_offsets[L:].repeat(B)  # [B*S] in 1..K
    valid = (sat_labels != IGNORE_INDEX).flatten()  # [B*S] False: the target lies across a document boundary
    log_p = F.log_softmax(sat_logits.float(), dim=-1).flatten(0, 1)  # [B*S, V]
    if cfg.target == "soft" and std_logits is not None:
        # Drafts are accepted when they match the model, not the corpus: learn its whole distribution
        # at the position that predicts the same token (free: it is in this forward already).
        rows = torch.arange(B, device=same_target.device)[:, None]
        teacher = std_logits.detach().float()[rows, same_target].softmax(-1).flatten(0, 1)
        per_token = -(teacher * log_p).sum(-1)
    else:
        per_token = F.nll_loss(log_p, sat_labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    w = cfg.offset_weight_tensor.to(per_token.device)[offsets.to(per_token.device)] * valid.to(per_token.device)
    sat_loss = (w * per_token).sum() / w.sum().clamp(min=1e-9)
    std_loss = None
    loss = cfg.sat_loss_weight * sat_loss
    base_logits = None
    # (not with freeze_lora: its standard tokens are the warm-start model's by construction, and peft's
    # disable_adapter() would mark the frozen LoRA trainable again on exit)
    if cfg.mode == "lora" and not cfg.freeze_lora and (cfg.std_target in ("base", "init") or with_agree):
        base_logits = standard_logits_of_base(model, batch, cfg, reference)
    if not cfg.standard_tokens_fixed:  # else their standard logits are the starting model's: nothing to learn
        if cfg.std_target in ("base", "init"):
            std_loss = kl_from_base(std_logits, base_logits, batch)
        else:
            std_loss = F.cross_entropy(std_logits.float().flatten(0, 1), batch.labels[:, :L].flatten(),
                                       ignore_index=IGNORE_INDEX)
        loss = loss + std_loss

    with torch.no_grad():
        pred = sat_logits.argmax(-1)  # [B, S]
        acc = _per_offset_mean((pred == sat_labels).flatten()[valid], offsets[valid], K)
        agree = std_agree_base = None
        if with_agree:
            own = std_logits.argmax(-1).gather(1, same_target)
            agree = _per_offset_mean((pred == own).flatten()[valid], offsets[valid], K)
            if base_logits is not None:
                std_agree_base = (std_logits.argmax(-1) == base_logits.argmax(-1)).float().mean().item()
    stats = StepStats(loss.item(), None if std_loss is None else std_loss.item(), sat_loss.item(), acc, agree,
                      std_agree_base)
    return loss, stats


@torch.no_grad()
def standard_logits_of_base(model, batch: SATBatch, cfg: TrainConfig, reference=None) -> torch.Tensor:
    """[B, L, V] logits of the base model (the peft model with its LoRA off), or of `reference` where
    given (std_target init: the frozen warm-start model), at the standard tokens, under the same
    attention as in the training forward (kl_from_base leaves the SAT ids out)."""
    L = batch.num_standard
    net, off = (model, model.disable_adapter()) if reference is None else (reference, contextlib.nullcontext())
    with off, _autocast(cfg.dtype, batch.input_ids.device.type):
        return net(input_ids=batch.input_ids[:, :L], position_ids=batch.position_ids[:, :L],
                   attention_mask=batch.additive_mask(_mask_dtype(cfg), slice(None, L), slice(None, L)),
                   use_cache=False).logits


def _mask_sat_columns(logits: torch.Tensor, batch: SATBatch) -> torch.Tensor:
    sat_ids = torch.unique(batch.input_ids[:, batch.num_standard:])
    return logits.index_fill(-1, sat_ids.to(logits.device), float("-inf"))


def kl_from_base(std_logits: torch.Tensor, base_logits: torch.Tensor, batch: SATBatch) -> torch.Tensor:
    """KL(base || model), the mean over standard positions with a label (no document boundary),
    SAT ids left out of both distributions: 0 exactly when the trained model answers like the base.
    std_logits, base_logits: [B, L, V]."""
    log_q = F.log_softmax(_mask_sat_columns(std_logits.float(), batch), dim=-1)  # [B, L, V]
    log_p = F.log_softmax(_mask_sat_columns(base_logits.float(), batch), dim=-1)
    p = log_p.exp()
    per_pos = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)  # [B, L]; 0 log 0 = 0 at the SAT columns
    keep = (batch.labels[:, :batch.num_standard] != IGNORE_INDEX).to(per_pos.dtype)
    return (per_pos * keep).sum() / keep.sum().clamp(min=1.0)


@torch.no_grad()
def evaluate(model, rows: TokenRows, sdsat: SDSATConfig, cfg: TrainConfig, num_batches: int | None = None,
             seed: int = 1234, reference=None) -> dict:
    """SAT accuracy and agreement per offset on held-out rows (fixed insertion points per seed)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    n = rows.shape[0] if num_batches is None else min(rows.shape[0], num_batches * cfg.batch_size)
    K = sdsat.num_sat
    acc_sum, agree_sum, loss_sum, batches = [0.0] * K, [0.0] * K, 0.0, 0
    base_agree = []
    for start in range(0, n, cfg.batch_size):
        batch = sat_batch(rows[start:start + cfg.batch_size], sdsat, cfg, g)
        _, st = sat_forward_loss(model, batch, cfg, with_agree=True, reference=reference)
        acc_sum = [a + b for a, b in zip(acc_sum, st.sat_acc)]
        agree_sum = [a + b for a, b in zip(agree_sum, st.sat_agree)]
        loss_sum += st.sat_loss
        batches += 1
        if st.std_agree_base is not None:
            base_agree.append(st.std_agree_base)
    model.train(was_training)
    out = {"sat_loss": loss_sum / batches, "sat_acc": [a / batches for a in acc_sum],
           "sat_agree": [a / batches for a in agree_sum], "eval_rows": n}
    if base_agree:
        out["std_agree_base"] = sum(base_agree) / len(base_agree)
    return out


# ----------------------------------------------------------------------------------------------
# schedule, batches, checkpoints


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_for(step: int, micro: int, rows: TokenRows, sdsat: SDSATConfig, cfg: TrainConfig) -> SATBatch:
    """The batch of (step, micro-step) is a pure function of the seed: a resumed run sees the same data."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 131 + micro)
    n = rows.shape[0]
    per_epoch = max(1, n // cfg.batch_size)
    k = step * cfg.grad_accum + micro
    epoch, slot = divmod(k, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
    idx = perm[slot * cfg.batch_size:(slot + 1) * cfg.batch_size]
    return sat_batch(rows[idx], sdsat, cfg, g)


def sat_batch(chunk: TokenRows, sdsat: SDSATConfig, cfg: TrainConfig, g: torch.Generator) -> SATBatch:
    """Rows laid out with cfg.blocks_per_seq SAT blocks each, at points drawn from `g` (where
    cfg.sat_blocks lets them stand): the one layout of training and held-out evaluation."""
    pts = sample_insertion_points(chunk.shape[0], chunk.shape[1], cfg.blocks_per_seq, sdsat.num_sat, g,
                                  block_points(chunk, cfg))
    return build_sat_batch(chunk.ids, pts, sdsat.sat_token_ids, chunk.label_ok)


def block_points(rows: TokenRows, cfg: TrainConfig) -> torch.Tensor | None:
    """[B, L] bool: where sat_blocks "drafted" lets a SAT block stand (insertion point p: the standard
    position p predicts x_{p+1}, a drafted token; the SATs stand for the tokens after it); None: anywhere."""
    if cfg.sat_blocks == "all" or rows.drafted is None:
        return None
    return torch.nn.functional.pad(rows.drafted[:, 1:], (0, 1), value=False)


def load_adapter_weights(model, sdsat: SDSATConfig, cfg: TrainConfig, adapter_dir: Path) -> None:
    """Warm start: copy an exported adapter's LoRA matrices and SAT rows into a fresh run's model.
    Refuses an adapter of another shape (SAT ids, K, mode or LoRA rank) instead of loading half of it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .export import ADAPTER_META

    meta_path, weights = adapter_dir / ADAPTER_META, adapter_dir / "adapter_model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not an SDSAT adapter (needs {ADAPTER_META} and "
                                "adapter_model.safetensors)")
    meta = json.loads(meta_path.read_text())
    theirs = SDSATConfig.from_dict(meta["sdsat"])
    peft_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems = []
    if tuple(theirs.sat_token_ids) != tuple(sdsat.sat_token_ids):
        problems.append(f"SAT ids {list(theirs.sat_token_ids)} vs {list(sdsat.sat_token_ids)}")
    if theirs.train_mode != cfg.mode:
        problems.append(f"mode {theirs.train_mode} vs {cfg.mode}")
    if cfg.mode in ("lora", "gated") and peft_cfg.get("r") != cfg.lora_r:
        problems.append(f"LoRA rank {peft_cfg.get('r')} vs {cfg.lora_r}")
    if problems:
        raise ValueError(f"cannot warm-start from {adapter_dir}: " + "; ".join(problems))
    if cfg.mode == "gated":
        _load_gated_adapter_weights(model, load_file(weights), fewer_layers=bool(cfg.gated_targets))
        return
    result = set_peft_model_state_dict(model, load_file(weights))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{adapter_dir} holds weights this model does not have: {unexpected[:3]}")


@torch.no_grad()
def _load_gated_adapter_weights(model, tensors: dict[str, torch.Tensor], fewer_layers: bool = False) -> None:
    """Warm start of a gated run: the LoRA matrices into the gated layers, the SAT rows into peft's
    TrainableTokens delta (the same keys a `lora` adapter has). fewer_layers: the run gates a chosen
    set of layers (gated_targets), the adapter's matrices for any other layer are left out."""
    from .gated import load_gated_lora_state, sat_rows_key

    load_gated_lora_state(model, tensors, extra_ok=fewer_layers)
    (delta,) = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]  # tied: one param
    rows = tensors[sat_rows_key(model.get_base_model())]
    if rows.shape != delta.shape:
        raise ValueError(f"the adapter's SAT rows have shape {tuple(rows.shape)}, this model {tuple(delta.shape)}")
    delta.copy_(rows)


def frozen_copy(model):
    """A copy of the model that never trains (std_target init's reference): eval mode, no grad."""
    import copy

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, model, optimizer, step: int) -> None:
    """Atomic: a stop in the middle leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    tmp = out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: t.contiguous() for n, t in _trainable_state(model).items()}, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json_atomic(tmp / "state.json", {"step": step, "time": time.time()})
    final, old = out / "checkpoint", out / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, model, optimizer) -> int:
    """Restore trainable weights and optimizer; returns the number of completed steps."""
    from safetensors.torch import load_file

    ckpt = out / "checkpoint"
    state = load_file(ckpt / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = set(state) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise RuntimeError(f"checkpoint in {ckpt} does not match this model/mode (differs in {sorted(missing)[:3]}...)")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    # saved on any device, resumed on any: the optimizer moves its state to its parameters' device
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu"))
    return json.loads((ckpt / "state.json").read_text())["step"]


def _check_resume_config(out: Path, cfg: TrainConfig) -> None:
    saved_path = out / "train_config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    try:  # a run saved before a config field existed resumes with that field's default
        saved = json.loads(json.dumps(TrainConfig.from_dict(saved).to_dict()))
    except (TypeError, ValueError):  # unknown or invalid fields: compare as saved
        pass
    now = json.loads(json.dumps(cfg.to_dict()))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if diff and (out / "checkpoint").exists():
        raise ValueError(f"{out} holds a run with a different config ({', '.join(diff)}); "
                         "use a new --output-dir or the same settings to resume")


# ----------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, model=None, tokenizer=None, log=print) -> Path:
    """Train (or resume) the run in cfg.output_dir; returns that directory.

    model/tokenizer may be given directly (tests pass tiny models); otherwise cfg.model is loaded.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume_config(out, cfg)
    write_json_atomic(out / "train_config.json", cfg.to_dict())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    base_id, base_sha, serve_dtype = cfg.model, None, None
    if model is None:
        model, tokenizer, base_id, base_sha, serve_dtype = load_base(cfg.model)
    serve_dtype = serve_dtype or model.dtype
    base_tensors = None
    if cfg.mode == "gated":  # recorded in the adapter, checked wherever a served directory is built
        from .gated import base_tensor_digests

        had = getattr(model.config, "sdsat", None)  # an SDSAT model as the base: its SAT rows are the adapter's
        base_tensors = base_tensor_digests(model, serve_dtype, SDSATConfig.from_dict(had).sat_id_set if had else ())
    # an SDSAT model as the base (gated only): its SATs and their trained rows are where this run starts
    sdsat = sat_tokens_of(model, tokenizer, cfg.num_sat, cfg.distinct_sats, cfg.mode, base_id, base_sha)
    model, groups = make_trainable(model, sdsat, cfg)
    device = cfg.torch_device()
    model.to(device)
    log(f"training on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    model.train()
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    train_rows, heldout_rows = load_datasets(cfg.data, tokenizer, cache_dir=out)
    reference = None
    resuming = (out / "checkpoint").exists()
    # a checkpoint holds the trained weights only: a frozen LoRA or init's reference comes from the adapter again
    if cfg.init_adapter and (not resuming or cfg.std_target == "init" or cfg.freeze_lora):
        load_adapter_weights(model, sdsat, cfg, Path(cfg.init_adapter))
        if cfg.std_target == "init":  # frozen before the first step; a resume rebuilds it the same way
            reference = frozen_copy(model)
    start = load_checkpoint(out, model, optimizer) if resuming else 0
    if start:
        log(f"resuming {out} at step {start}/{cfg.steps}")
    elif cfg.init_adapter:
        log(f"warm start from {cfg.init_adapter}")

    t0, tokens, last_save = time.time(), 0, start
    stats = None
    with open(out / "log.jsonl", "a") as logf, tqdm(total=cfg.steps, initial=start, desc="sat-train") as bar:
        for step in range(start, cfg.steps):
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * lr_factor(step, cfg)
            for micro in range(cfg.grad_accum):
                batch = batch_for(step, micro, train_rows, sdsat, cfg)
                loss, stats = sat_forward_loss(model, batch, cfg, reference=reference)
                (loss / cfg.grad_accum).backward()
                tokens += batch.input_ids.numel()
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(sat_loss=f"{stats.sat_loss:.3f}", acc1=f"{stats.sat_acc[0]:.2f}")
            done = step + 1
            record = None
            if done % cfg.log_every == 0 or done == cfg.steps:
                record = {"step": done, "lr": optimizer.param_groups[-1]["lr"], **dataclasses.asdict(stats),
                          "tokens_per_s": tokens / (time.time() - t0)}
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) > cfg.max_minutes * 60
            if done % cfg.eval_every == 0 or done == cfg.steps or out_of_time:  # a budgeted run ends evaluated
                record = record or {"step": done}
                record["eval"] = evaluate(model, heldout_rows, sdsat, cfg, cfg.eval_batches, reference=reference)
            if record:
                logf.write(json.dumps(record) + "\n")
                logf.flush()
            if done % cfg.save_every == 0 or done == cfg.steps or out_of_time:
                save_checkpoint(out, model, optimizer, done)
                last_save = done
            if out_of_time:
                log(f"stopping after {cfg.max_minutes} min at step {done}; run again to resume")
                return out
    if last_save < cfg.steps:
        save_checkpoint(out, model, optimizer, cfg.steps)
    if cfg.export:
        from .export import export_run

        export_run(model.to("cpu"), tokenizer, sdsat, cfg, out, serve_dtype, base_tensors=base_tensors)
    return out
