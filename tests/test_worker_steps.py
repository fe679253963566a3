"""benchmarks/worker_steps.py's pure parts: which traced worker steps belong to which timed run, and
which count as plain and as speculative decode steps (hand-built traces)."""

from __future__ import annotations

from benchmark_scripts import load_benchmark


def _step(t, n, requests, ms, decode=True):
    return {"t": t, "n": n, "requests": requests, "decode": decode, "ms": ms}


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
    s = worker_steps.summarize(steps)
    assert s["steps"] == 9 and s["decode_steps"] == 8
    assert s["median_plain_step_ms"] == 253.5  # 251..255 and 900
    assert s["steps_with_speculative_tokens"] == 2 and s["their_ms"] == [1700, 1600]
    assert s["decode_steps_over_3x_median"] == 3  # the two speculative steps and the 900 ms one
    assert worker_steps.summarize([])["median_plain_step_ms"] is None
