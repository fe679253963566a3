"""benchmarks/worker_steps.py's pure parts: which traced worker steps belong to which timed run, and
which count as plain and as speculative decode steps (hand-built traces)."""

from __future__ import annotations

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
