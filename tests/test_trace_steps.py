"""benchmarks/trace_steps.py's totals: which traced steps count as decode steps with speculative
tokens, and what they are compared with (hand-built traces)."""

from __future__ import annotations

from benchmark_scripts import load_benchmark


def _step(requests, scheduled, step_ms, decode_only=True, proposer_ms=1.0):
    return {"requests": requests, "scheduled": scheduled, "decode_only": decode_only, "step_ms": step_ms,
            "proposer_ms": proposer_ms, "next_requests_speculating": 0, "next_speculative_tokens": 0}


def test_summary_splits_decode_steps_by_speculative_tokens():
    trace_steps = load_benchmark("trace_steps")
    steps = [_step(64, 2704, None, decode_only=False),  # the prefill's call: no step time yet
             _step(64, 64, 150.0), _step(64, 64, 160.0), _step(64, 384, 1370.0, proposer_ms=5.0),
             _step(64, 64, 380.0, proposer_ms=180.0), _step(63, 63, 155.0),
             _step(63, 90, 400.0, decode_only=False)]  # a prefill chunk beside decodes: neither kind
    s = trace_steps.summarize(steps)
    assert s["steps"] == 7 and abs(s["proposer_s"] - 0.19) < 1e-9
    assert s["steps_with_speculative_tokens"] == 1 and s["speculative_tokens"] == 320
    assert s["speculative_steps_ms"] == [1370.0]
    assert s["median_plain_step_ms"] == 157.5  # 150, 155, 160, 380
    # the proposer's costliest steps first (ms, step index, requests), and its median
    assert s["proposer_top_ms"][:2] == [(180.0, 4, 64), (5.0, 3, 64)] and s["median_proposer_ms"] == 1.0
    assert trace_steps.summarize([])["median_plain_step_ms"] is None
    assert trace_steps.summarize([])["median_proposer_ms"] is None and trace_steps.summarize([])["proposer_top_ms"] == []


def test_summary_tabulates_decode_steps_by_size():
    trace_steps = load_benchmark("trace_steps")
    steps = [_step(1, 40, None, decode_only=False), _step(1, 2, 31.0), _step(1, 2, 33.0), _step(1, 2, 30.0),
             _step(1, 6, 25.5), _step(1, 45, 70.0, decode_only=False)]  # the prefills count in neither size
    s = trace_steps.summarize(steps)
    assert s["median_step_ms_by_tokens"] == {2: 31.0, 6: 25.5} and s["steps_by_tokens"] == {2: 3, 6: 1}
