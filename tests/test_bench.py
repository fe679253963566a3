"""The vLLM engine runner that `sdsat demo` and benchmarks/bench_vllm.py share (sdsat_vllm/bench.py),
and both commands end to end, on a stand-in for vLLM (tests/fake_vllm.py): the warm-up stays out of
the counters, every engine is shut down (also on error), the figures printed are the ones computed,
and vLLM's INFO logging is off unless -v. The real engines run in the slow tests and the results."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pytest

import fake_vllm
from sdsat_vllm import bench
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _vllm_logger_level_restored():
    logger = logging.getLogger("vllm")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return fake_vllm.install(monkeypatch), fake_vllm.write_model_dir(tmp_path / "model", num_sat=3)


def load_bench_vllm():
    before = list(sys.path)
    module = load_benchmark("bench_vllm")
    assert sys.path == before  # imported normally, no sys.path edit
    return module


def test_run_vllm_times_after_warm_up_and_shuts_down(fake):
    FakeLLM, model = fake
    sampling = fake_vllm.SamplingParams(temperature=0, max_tokens=20)
    spec = {"model": "sdsat", "num_speculative_tokens": 3, "sdsat_policy": "fixed"}
    prompts = ["a" * 10, "b" * 11, "c" * 12]
    res = bench.run_vllm(model, spec, prompts, sampling, batch_sizes=[1, 2], engine_kw={"seed": 0})
    (llm,) = FakeLLM.instances
    assert llm.shut_down and llm.kw == {"max_num_seqs": 2, "seed": 0} and res.startup_s == 3.0
    warm = [len(p) for p, s in llm.calls if s.max_tokens == 8]
    assert warm == [1, 2]  # every batch size once, before the timed passes
    assert [len(p) for p, s in llm.calls if s is sampling] == [1, 1, 1, 2, 1]
    assert [r.batch_size for r in res.runs] == [1, 2]
    for r in res.runs:
        assert r.tokens == 60 and r.token_ids[0] == [(10 * 7 + 3 * i) % 97 for i in range(20)]
        assert r.spec.draft_len == 3 and r.spec.num_drafts > 0
    # the two timed passes' counters add up to the engine's total minus the warm-up's
    total = sum(r.spec.num_accepted_tokens for r in res.runs)
    assert 0 < total < llm.counters["accepted"]


def test_run_vllm_shuts_down_on_error(fake, monkeypatch):
    FakeLLM, model = fake

    def boom(self, *a, **k):
        raise RuntimeError("engine died")

    monkeypatch.setattr(FakeLLM, "generate", boom)
    with pytest.raises(RuntimeError, match="engine died"):
        bench.run_vllm(model, None, ["x"], fake_vllm.SamplingParams())
    assert FakeLLM.instances[0].shut_down


def test_quiet_vllm(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    bench.quiet_vllm(verbose=True)
    assert "VLLM_LOGGING_LEVEL" not in os.environ
    bench.quiet_vllm()
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # the user's choice wins
    bench.quiet_vllm()
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_demo_prints_its_figures(fake, capsys, tmp_path, monkeypatch):
    from sdsat_vllm import demo

    FakeLLM, model = fake
    for k in bench.CPU_RUNTIME_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/x/libiomp5.so")
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    out_json = tmp_path / "demo.json"
    assert demo.run(p.parse_args(["--model", str(model), "-n", "2", "--num-prompts", "3", "--stop",
                                  "--json", str(out_json)])) == 0
    out = capsys.readouterr().out
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING" and os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"
    plain, sdsat, fixed = FakeLLM.instances
    # the headline run uses the plugin's default policy; the third engine pins the fixed policy, whose
    # every drafting step offers n real drafts, for the drafter's own per-position figures
    assert plain.spec is None and sdsat.spec == {"model": "sdsat", "num_speculative_tokens": 2}
    assert fixed.spec == {"model": "sdsat", "num_speculative_tokens": 2, "sdsat_policy": "fixed"}
    assert all(i.shut_down for i in (plain, sdsat, fixed)) and plain.kw["max_num_seqs"] == 4
    assert plain.kw["dtype"] == "float32"
    assert all(s.stop == bench.HUMANEVAL_STOP for _, s in plain.calls[1:])
    doc = json.loads(out_json.read_text())
    s = doc["sdsat_fixed"]
    assert doc["identical_outputs"] == 3 and s["draft_len"] == 2 and s["identical_outputs"] == 3
    assert doc["runtime"] == {"LD_PRELOAD": "/x/libiomp5.so"}  # as it was before the demo set VLLM_CPU_KVCACHE_SPACE
    assert doc["sdsat"]["draft_len"] is None and doc["sdsat"]["real_draft_acceptance_rate_per_pos"] is None
    real = "  ".join(f"{i + 1}:{r:.2f}" for i, r in enumerate(s["real_draft_acceptance_rate_per_pos"]))
    per_draft = "  ".join(f"{i + 1}:{r:.2f}" for i, r in enumerate(s["acceptance_rate_per_pos"]))
    assert f"acceptance rate per draft position, real drafts: {real}\n" in out
    assert f"vLLM's (per draft, SAT-only forwards included): {per_draft}\n" in out
    assert (f"speedup: {doc['speedup']:.2f}x   tokens per decode forward: "
            f"{doc['sdsat']['tokens_per_decode_forward']:.2f}\n" in out)
    assert f"mean acceptance length: {s['mean_acceptance_length']:.2f} tokens per decode forward" in out
    assert "greedy outputs identical to plain decoding: 3/3 (both policies)" in out
    assert "with lookup-backed drafts: the text's own)" in out  # this model directory has no datastore
    # the fake engine counts every decode forward as a draft (as vLLM does under SDSAT) and no stop string
    # cuts an accepted token: the mean acceptance length is the tokens per decode forward
    assert s["mean_acceptance_length"] == pytest.approx(s["tokens_per_decode_forward"])
    assert s["num_decoded_tokens"] == s["tokens"] - 3


def test_demo_without_drafter_figures(fake, tmp_path):
    from sdsat_vllm import demo

    FakeLLM, model = fake
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    out_json = tmp_path / "demo.json"
    assert demo.run(p.parse_args(["--model", str(model), "--num-prompts", "2", "--no-drafter-figures",
                                  "--json", str(out_json)])) == 0
    assert len(FakeLLM.instances) == 2 and json.loads(out_json.read_text())["sdsat_fixed"] is None


def test_demo_names_the_datastore_where_the_model_has_one(fake, capsys):
    from sdsat_vllm import demo
    from sdsat_vllm.datastore import MODEL_DIR_FILE, save_datastore

    _, model = fake
    save_datastore(Path(model) / MODEL_DIR_FILE, [[1, 2, 3]], {})
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    assert demo.run(p.parse_args(["--model", str(model), "--num-prompts", "2", "--no-drafter-figures"])) == 0
    assert "with lookup-backed drafts: the text's own and the model's datastore)" in capsys.readouterr().out


def test_demo_verbose_leaves_vllm_logging_alone(fake):
    from sdsat_vllm import demo

    _, model = fake
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    assert demo.run(p.parse_args(["--model", str(model), "--num-prompts", "1", "--max-tokens", "4", "-v"])) == 0
    assert "VLLM_LOGGING_LEVEL" not in os.environ


def test_bench_vllm_table(fake, capsys, tmp_path):
    FakeLLM, model = fake
    b = load_bench_vllm()
    out_json = tmp_path / "bench.json"
    rc = b.main([str(model), "--methods", "sdsat", "ngram", "pard", "--num-prompts", "3", "--max-tokens", "12",
                 "--batch-sizes", "1", "2", "--work-dir", str(tmp_path / "w"), "--out", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert [i.spec and (i.spec.get("model"), i.spec.get("method")) for i in FakeLLM.instances] == [
        None, ("sdsat", None), (None, "ngram"), (str(tmp_path / "w" / "model-as-pard-draft"), "draft_model")]
    assert all(i.shut_down for i in FakeLLM.instances)
    rows = json.loads(out_json.read_text())["results"]
    assert len(rows) == 8 and {r["batch_size"] for r in rows} == {1, 2}
    sd = next(r for r in rows if r["method"] == "sdsat" and r["batch_size"] == 1)
    assert sd["draft_len"] == 3 and sd["real_draft_acceptance_rate_per_pos"] and sd["acceptance_rate_per_pos"]
    line = next(ln for ln in out.splitlines() if ln.split()[:3] == ["humaneval", "sdsat", "1"])
    assert ",".join(f"{x:.2f}" for x in sd["real_draft_acceptance_rate_per_pos"]) in line
    assert ",".join(f"{x:.2f}" for x in sd["acceptance_rate_per_pos"]) in line
    # tokens per decode forward: decoded tokens / (decoded - accepted), for every method alike
    decoded = sd["output_tokens"] - 3
    assert sd["num_decoded_tokens"] == decoded
    assert sd["tokens_per_decode_forward"] == pytest.approx(decoded / (decoded - sd["num_accepted_tokens"]))
    assert f" {sd['tokens_per_decode_forward']:.2f} " in line
    assert next(r for r in rows if r["method"] == "plain")["tokens_per_decode_forward"] == 1.0
    ngram = next(r for r in rows if r["method"] == "ngram")
    assert ngram["draft_len"] is None and ngram["real_draft_acceptance_rate_per_pos"] is None
    assert "acc. rate/pos: real drafts" in out and "vLLM (per draft)" in out


class _Params:
    """SamplingParams' two members spread_lengths uses."""

    def __init__(self, max_tokens):
        self.max_tokens = max_tokens

    def clone(self):
        return _Params(self.max_tokens)


def test_spread_lengths_draws_each_prompts_max_tokens_around_the_given_one():
    from sdsat_vllm.bench import spread_lengths

    base = _Params(64)
    out = spread_lengths(base, 400, 0.5, seed=3)
    lengths = [p.max_tokens for p in out]
    assert len(out) == 400 and base.max_tokens == 64 and all(p is not base for p in out)
    assert min(lengths) >= 32 and max(lengths) <= 96
    assert min(lengths) < 36 and max(lengths) > 92  # the whole range is used, not a constant
    assert abs(sum(lengths) / len(lengths) - 64) < 3
    assert lengths == [p.max_tokens for p in spread_lengths(base, 400, 0.5, seed=3)]  # deterministic
    assert lengths != [p.max_tokens for p in spread_lengths(base, 400, 0.5, seed=4)]
    assert {p.max_tokens for p in spread_lengths(base, 5, 0.0)} == {64}
    assert all(p.max_tokens >= 1 for p in spread_lengths(_Params(1), 50, 0.9))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="length spread"):
            spread_lengths(base, 4, bad)


def test_a_timed_runs_summary_row_by_hand():
    """Two requests of 5 and 3 tokens: 6 decoded after their prefills, 2 drafts accepted, so 4 decode forwards in
    2 s: 500 ms a forward, 1.5 tokens a forward, 4 tokens/s."""
    from sdsat_vllm.vllm_plugin.metrics import SpecDecodeSummary

    spec = SpecDecodeSummary(num_drafts=4, num_draft_tokens=6, num_accepted_tokens=2, num_decoded_tokens=6)
    row = bench.TimedRun(1, 2.0, [[1] * 5, [1] * 3], ["", ""], spec).summary_row()
    assert row == {"batch_size": 1, "wall_s": 2.0, "tokens": 8, "decode_forwards": 4, "ms_per_forward": 500.0,
                   "tokens_per_forward": 1.5, "accepted": 2, "draft_tokens": 6, "tok_per_s": 4.0}
    plain = bench.TimedRun(1, 2.0, [[1]], [""], SpecDecodeSummary(num_decoded_tokens=0)).summary_row()
    assert plain["decode_forwards"] == 1 and plain["tok_per_s"] == 0.5  # a forward commits at least one token


def test_observe_proposer_passes_every_argument_through_and_restores_the_hook(monkeypatch):
    """The step tools (step_times.py, trace_steps.py) observe the proposer's hook through
    bench.observe_proposer; their own wrappers had spelled its parameters out and broke when the patch
    began to pass `requests`. Called as the runner's patch calls it, the observer sees every argument
    by name, the hook gets them as given, the observer's return is the drafts, and the hook is back
    after the block (also when the block raises)."""
    import functools

    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    real = SDSATProposer.sdsat_propose_with_context
    calls = []

    @functools.wraps(real)  # the real signature, without running a proposer
    def stub(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return [[7], []]

    monkeypatch.setattr(SDSATProposer, "sdsat_propose_with_context", stub)
    seen = []

    def observer(proposer, arguments, call):
        seen.append((proposer, arguments))
        return [d + [1] for d in call()]

    with bench.observe_proposer(observer):
        out = SDSATProposer.sdsat_propose_with_context("P", "batch", [[1], [2]], None, "meta",
                                                       scheduler_output="S", requests={"r": 1})
    assert out == [[7, 1], [1]]
    assert calls == [("P", ("batch", [[1], [2]], None, "meta"), {"scheduler_output": "S", "requests": {"r": 1}})]
    (proposer, arguments), = seen
    assert proposer == "P"
    assert {k: arguments[k] for k in ("input_batch", "sampled_token_ids", "spec_decode_metadata",
                                      "scheduler_output", "requests")} == {
        "input_batch": "batch", "sampled_token_ids": [[1], [2]], "spec_decode_metadata": "meta",
        "scheduler_output": "S", "requests": {"r": 1}}
    assert SDSATProposer.sdsat_propose_with_context is stub

    with pytest.raises(RuntimeError), bench.observe_proposer(observer):
        raise RuntimeError("the engine failed")
    assert SDSATProposer.sdsat_propose_with_context is stub

    with bench.observe_proposer(observer):  # defaults filled in: called without the keywords
        SDSATProposer.sdsat_propose_with_context("P", "batch", [[1]], None, None)
    assert seen[-1][1]["scheduler_output"] is None and seen[-1][1]["requests"] is None
