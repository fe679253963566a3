"""benchmarks/sampled_profile.py's accounting of py-spy's raw output (hand-built stacks): a part's share is
the fraction of the samples inside the timed region whose stack holds its function, by whole name."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark

RAW = [
    # outside the timed region (start-up, the untimed warm run): not counted
    "<module> (x.py:1);LLM.__init__ (vllm/entrypoints/llm.py:342) 50",
    "<module> (x.py:1);_warm (b.py:9);GPUModelRunner._model_forward (r.py:1) 40",
    # inside it
    "<module> (x.py:1);generate_continuous (bench.py:382);EngineCore.step (core.py:1);"
    "GPUModelRunner._model_forward (r.py:1);LlamaModel.forward (l.py:2) 70",
    "<module> (x.py:1);generate_continuous (bench.py:382);GPUModelRunner.sample_tokens (r.py:9);"
    "RejectionSampler.forward (rs.py:148);Sampler.forward (s.py:3) 6",
    "<module> (x.py:1);generate_continuous (bench.py:382);GPUModelRunner.sample_tokens (r.py:9);"
    "SDSATProposer.sdsat_propose_with_context (p.py:5);SDSATProposer._adaptive (p.py:6);lookup_chains (p.py:7) 4",
    "<module> (x.py:1);generate_continuous (bench.py:382);Scheduler.schedule (s.py:1) 20",
    "not a line",
    "",
]


def test_shares_count_the_timed_samples_by_whole_function_names():
    mod = load_benchmark("sampled_profile")
    got = mod.shares(RAW)
    assert got["samples"] == 100
    parts = got["parts"]
    assert set(parts) == {label for label, _ in mod.PARTS}
    assert parts["model forward"] == pytest.approx(0.70)
    assert parts["sampling half"] == pytest.approx(0.10)  # parts nest: the proposer and the sampler inside
    assert parts["  rejection sampler"] == pytest.approx(0.06)
    assert parts["  SDSAT proposer"] == pytest.approx(0.04) and parts["    lookups"] == pytest.approx(0.04)
    assert parts["scheduler"] == pytest.approx(0.20)
    assert parts["  greedy sampler"] == 0.0 and parts["    policy decisions"] == 0.0


def test_no_timed_samples_gives_zero_shares():
    mod = load_benchmark("sampled_profile")
    got = mod.shares(RAW[:2])
    assert got["samples"] == 0 and not any(got["parts"].values())
    assert mod.frame_name("RejectionSampler.forward (vllm/v1/sample/rejection_sampler.py:148)") == \
        "RejectionSampler.forward"
