"""benchmarks/step_times.py's table: decode-only steps grouped by path and size, medians in ms;
steps with a prefill in them left out (they are not what the cost model fits)."""

from __future__ import annotations

import pytest
from benchmark_scripts import load_benchmark


def test_steps_grouped_by_path_and_size_prefills_left_out():
    st = load_benchmark("step_times")
    steps = [{"tokens": 1, "speculative": False, "decode_only": True, "seconds": s} for s in (0.040, 0.042, 0.050)]
    steps += [{"tokens": 2, "speculative": True, "decode_only": True, "seconds": s} for s in (0.048, 0.046)]
    steps += [{"tokens": 270, "speculative": False, "decode_only": False, "seconds": 0.6}]  # a prefill
    table = st.by_path_and_size(steps)
    assert [(r["speculative"], r["tokens"], r["steps"]) for r in table] == [(False, 1, 3), (True, 2, 2)]
    assert table[0]["median_ms"] == pytest.approx(42.0) and table[1]["median_ms"] == pytest.approx(47.0)
    assert st.by_path_and_size([]) == []
