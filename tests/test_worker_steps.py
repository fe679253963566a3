"""benchmarks/worker_steps.py's pure parts: which traced worker steps belong to which timed run, and
which count as plain and as speculative decode steps (hand-built traces)."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark


def _step(t, n, requests, ms, decode=True, sample_ms=None):
    step = {"t": t, "n": n, "requests": requests, "decode": decode, "ms": ms}
    return step if sample_ms is None else {**step, "sample_ms": sample_ms}


def test_steps_are_split_by_the_runs_time_windows():
    worker_steps = load_benchmark("worker_steps")
    steps = [_step(0.5, 85, 1, 140.0, decode=False),  # vLLM's own start-up forward: in no run
             _step(1.0, 2631, 64, 6900.0, decode=False), _step(1.3, 64, 64, 250.0),
             _step(5.0, 2631, 64, 6400.0, decode=False), _step(5.2, 64, 64, 230.0)]
    first, second = worker_steps.split_runs(steps, [(1.0, 4.0), (4.5, 6.0)])
    assert [s["t"] for s in first] == [1.0, 1.3] and [s["t"] for s in second] == [5.0, 5.2]


def test_summary_separates_speculative_steps_and_counts_slow_ones():
    worker_steps = load_benchmark("worker_steps")
    steps = [_step(0, 2631, 64, 6900.0, decode=False)]  # the prefill: neither kind
    steps += [_step(i, 64, 64, 250.0 + i) for i in range(1, 6)]
    steps += [_step(6, 366, 61, 1700.0), _step(7, 455, 61, 1600.0), _step(8, 61, 61, 900.0)]
    s = worker_steps.summarize(steps, [], 20.0)
    assert s["steps"] == 9 and s["decode_steps"] == 8
    assert s["median_plain_step_ms"] == 253.5  # 251..255 and 900
    assert s["steps_with_speculative_tokens"] == 2 and s["their_ms"] == [1700, 1600]
    assert s["decode_steps_over_3x_median"] == 3  # the two speculative steps and the 900 ms one
    assert worker_steps.summarize([], [], 1.0)["median_plain_step_ms"] is None


def test_summary_times_the_sampling_half_and_the_engine_cores_steps():
    worker_steps = load_benchmark("worker_steps")
    steps = [_step(1, 4, 4, 50.0, sample_ms=2.0), _step(2, 4, 4, 52.0, sample_ms=4.0),
             _step(3, 9, 4, 60.0, sample_ms=12.0), _step(4, 10, 4, 70.0)]  # the last one sampled nowhere
    engine = [{"t": 1, "ms": 60.0}, {"t": 2, "ms": 62.0}, {"t": 3, "ms": 90.0}, {"t": 4, "ms": 88.0}]
    s = worker_steps.summarize(steps, engine, 0.5)
    assert s["median_sample_ms"] == {"plain": 3.0, "speculative": 12.0}
    assert s["worker_ms"] == 50 + 2 + 52 + 4 + 60 + 12 + 70
    assert s["engine_steps"] == 4 and s["engine_ms"] == 300 and s["median_engine_step_ms"] == 75.0
    assert s["engine_share_of_wall"] == 0.6  # 0.3 s of steps in 0.5 s: 0.2 s outside the engine core


def _result(method, runs, prompt_set="norepeat", batch=4):
    return {"meta": {"method": method, "prompt_set": prompt_set, "batch_size": batch}, "runs": runs}


def _run(tokens_per_s, wall_s, engine_ms, trace, mean_request_s=None):
    return {"tokens_per_s": tokens_per_s, "wall_s": wall_s, "engine_ms": engine_ms, "steps": len(trace),
            "trace": trace, "mean_request_s": mean_request_s}


def test_breakdown_splits_the_wall_time():
    worker_steps = load_benchmark("worker_steps")
    run = _run(100.0, 1.0, 900.0, [_step(1, 4, 4, 400.0, sample_ms=10.0), _step(2, 9, 4, 450.0, sample_ms=20.0)])
    assert worker_steps.breakdown(run) == {"forward": 850.0, "sample": 30.0, "engine_rest": 20.0,
                                           "outside_engine": 100.0, "wall": 1000.0}


def test_compare_pools_abba_files_without_their_cold_runs():
    worker_steps = load_benchmark("worker_steps")
    trace = [_step(1, 4, 4, 400.0, sample_ms=10.0)]
    cold = _run(10.0, 5.0, 4000.0, trace)  # each file's first run: left out
    results = [_result("plain", [cold, _run(100.0, 1.0, 500.0, trace)]),
               _result("sdsat-adaptive", [cold, _run(90.0, 1.0, 500.0, trace)]),
               _result("sdsat-adaptive", [cold, _run(110.0, 1.0, 500.0, trace), _run(120.0, 1.0, 500.0, trace)]),
               _result("plain", [cold, _run(120.0, 1.0, 500.0, trace)]),
               _result("plain", [_run(50.0, 1.0, 500.0, trace)], prompt_set="worst")]  # one run: kept
    rows = {(r["prompt_set"], r["method"]): r for r in worker_steps.compare(results)}
    plain, sdsat = rows["norepeat", "plain"], rows["norepeat", "sdsat-adaptive"]
    assert plain["runs"] == 2 and plain["tokens_per_s"] == 110.0 and plain["speedup"] == 1.0
    assert sdsat["runs"] == 3 and sdsat["tokens_per_s"] == (90 + 110 + 120) / 3
    assert abs(sdsat["speedup"] - (320 / 3) / 110) < 1e-12
    assert rows["worst", "plain"]["runs"] == 1 and rows["worst", "plain"]["tokens_per_s"] == 50.0
    assert sdsat["outside_engine_ms"] == 500.0 and sdsat["engine_rest_ms"] == 90.0
    table = worker_steps.compare_table(worker_steps.compare(results))
    assert "| norepeat | 4 | sdsat-adaptive | 3 | 106.7 | 0.970x | - | - |" in table  # no latencies: none


def test_compare_sets_mean_request_latency_against_plains():
    """Continuous batching: each run's mean request latency (admission to end), pooled as tokens/s
    are; a method's ratio is plain's mean over its own (> 1: its requests end sooner), also where its
    tokens/s are lower (a batch lasts as long as its slowest slot)."""
    worker_steps = load_benchmark("worker_steps")
    trace = [_step(1, 4, 4, 400.0, sample_ms=10.0)]
    cold = _run(10.0, 5.0, 4000.0, trace, mean_request_s=9.0)
    results = [_result("plain", [cold, _run(100.0, 1.0, 500.0, trace, 2.0), _run(100.0, 1.0, 500.0, trace, 2.4)]),
               _result("sdsat-adaptive", [cold, _run(98.0, 1.0, 500.0, trace, 2.0), _run(98.0, 1.0, 500.0, trace, 1.6)]),
               _result("sdsat-adaptive", [cold, _run(98.0, 1.0, 500.0, trace)], batch=16)]  # grouped: no latency
    rows = {(r["batch_size"], r["method"]): r for r in worker_steps.compare(results)}
    plain, sdsat = rows[4, "plain"], rows[4, "sdsat-adaptive"]
    assert plain["mean_request_s"] == 2.2 and plain["latency_speedup"] == 1.0
    assert sdsat["mean_request_s"] == 1.8 and abs(sdsat["latency_speedup"] - 2.2 / 1.8) < 1e-12
    assert sdsat["speedup"] == 0.98
    assert rows[16, "sdsat-adaptive"]["mean_request_s"] is None and rows[16, "sdsat-adaptive"]["latency_speedup"] is None
    assert "| norepeat | 4 | sdsat-adaptive | 2 | 98.0 | 0.980x | 1.80 | 1.222x |" in worker_steps.compare_table(
        worker_steps.compare(results))


@pytest.mark.parametrize("spread", ["1.0", "-0.2"])
def test_a_length_spread_outside_0_1_is_refused_before_any_engine(spread, capsys):
    with pytest.raises(SystemExit):
        load_benchmark("worker_steps").main(["--length-spread", spread, "--prompt-set", "worst"])
    assert "--length-spread must be in [0, 1)" in capsys.readouterr().err
