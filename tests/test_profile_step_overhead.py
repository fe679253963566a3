"""benchmarks/profile_step_overhead.py's accounting: pstats entries are matched to the parts by
"file:function", and a part is its function's cumulative time (here: stand-in modules named like
vLLM's and the plugin's files, profiled for real)."""

from __future__ import annotations

import cProfile
import importlib.util
import pstats

from benchmark_scripts import load_benchmark


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parts_are_cumulative_times_of_the_named_functions(tmp_path):
    prof_mod = load_benchmark("profile_step_overhead")
    (tmp_path / "proposer.py").write_text(
        "import time\n"
        "def _observe_logits():\n    time.sleep(0.02)\n"
        "def sdsat_propose_with_context():\n    time.sleep(0.05)\n    _observe_logits()\n")
    (tmp_path / "llm.py").write_text(
        "def generate(propose):\n    propose()\n    propose()\n")
    proposer = _module(tmp_path / "proposer.py", "fake_proposer")
    llm = _module(tmp_path / "llm.py", "fake_llm")
    prof = cProfile.Profile()
    prof.enable()
    llm.generate(proposer.sdsat_propose_with_context)
    prof.disable()
    parts = prof_mod.parts_of(pstats.Stats(prof))
    assert parts["model forward"] is None  # nothing of that name ran
    assert 0.13 <= parts["SDSAT proposer"] <= parts["generate (all)"]  # 2 x (0.05 + 0.02), callee included
    assert 0.035 <= parts["SAT-logit observer"] < parts["SDSAT proposer"]
    assert set(parts) == {label for label, _ in prof_mod.PARTS}
