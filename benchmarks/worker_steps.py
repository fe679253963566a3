"""Step by step, in vLLM's default engine (engine core and worker in their own processes): each
step's scheduled tokens and times, taken inside the worker, for plain decoding or SDSAT.

    python benchmarks/worker_steps.py [MODEL] --method sdsat-adaptive --prompt-set norepeat \
        --num-prompts 64 --batch-size 64 --max-tokens 64 [--repeats 3] [--out benchmarks/results/X.json]

trace_steps.py sees the proposer, but only with the engine in one process; the three-process engine,
which `LLM` and `vllm serve` use by default, keeps the worker out of reach. This script wraps the
model runner's `execute_model` at import, so the worker processes (spawned: they import this file
again) append one line per step to a trace file: the tokens scheduled (drafts and SAT tails show up
as more tokens than requests) and the step's forward time. Nothing is warmed up first: the first
`generate` is the engine's first, as a server's first requests are (results 17.1 found the policy
drafting for 8 costly steps there, from a slope its cost model fitted to plain steps).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TRACE_ENV = "SDSAT_WORKER_STEPS_TRACE"
METHODS = {
    "plain": None,
    "sdsat": {"sdsat_policy": "fixed"},
    "sdsat-adaptive": {"sdsat_policy": "adaptive", "sdsat_lookup": False},
    "sdsat-adaptive-lookup": {"sdsat_policy": "adaptive", "sdsat_lookup": True},
}


def _install_step_trace(path: str) -> None:
    """Wrap GPUModelRunner.execute_model (CPUModelRunner inherits it) to append
    {"t": monotonic start, "n": scheduled tokens, "requests", "decode": no prefill in it, "ms": its
    time} per call to `path`."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from sdsat_vllm.vllm_plugin.proposer import decode_only

    inner = GPUModelRunner.execute_model

    @functools.wraps(inner)  # keeps the signature the SDSAT patch registry checks
    def execute_model(self, scheduler_output, *args, **kwargs):
        t0 = time.monotonic()
        out = inner(self, scheduler_output, *args, **kwargs)
        per_request = scheduler_output.num_scheduled_tokens
        line = {"t": t0, "n": int(scheduler_output.total_num_scheduled_tokens), "requests": len(per_request),
                "decode": bool(per_request) and decode_only(per_request, scheduler_output.scheduled_spec_decode_tokens),
                "ms": (time.monotonic() - t0) * 1e3}
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        return out

    GPUModelRunner.execute_model = execute_model


if os.environ.get(TRACE_ENV) and __name__ != "__main__":  # a spawned engine process
    _install_step_trace(os.environ[TRACE_ENV])


def split_runs(steps: list[dict], windows: list[tuple[float, float]]) -> list[list[dict]]:
    """The traced steps of each timed `generate` (monotonic time is shared by the processes)."""
    return [[s for s in steps if lo <= s["t"] <= hi] for lo, hi in windows]


def summarize(steps: list[dict]) -> dict:
    """Decode steps (no prefill in them): the plain ones (one token a request) against the ones that
    carried speculative tokens (more tokens than requests), and how many took over 3x the median."""
    decode = [s for s in steps if s["decode"]]
    plain_ms = [s["ms"] for s in decode if s["n"] <= s["requests"]]
    spec = [s for s in decode if s["n"] > s["requests"]]
    med = statistics.median(plain_ms) if plain_ms else None
    return {"steps": len(steps), "decode_steps": len(decode), "median_plain_step_ms": med,
            "decode_steps_over_3x_median": sum(1 for s in decode if med and s["ms"] > 3 * med),
            "steps_with_speculative_tokens": len(spec), "their_ms": [round(s["ms"]) for s in spec]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--method", default="sdsat-adaptive", choices=sorted(METHODS))
    p.add_argument("--prompt-set", default="norepeat")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls, the first one cold")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.num_prompts < 1:
        p.error("--repeats, --batch-size and --num-prompts must be at least 1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from sdsat_vllm.bench import cpu_name, engine_kwargs, git_state, one_set_workload, quiet_vllm
    from sdsat_vllm.vllm_plugin import shutdown_llm

    git = git_state(Path(__file__).resolve().parent)
    quiet_vllm()
    from vllm import LLM

    work = one_set_workload(args.model, args.prompt_set, args.num_prompts, args.max_tokens)
    spec = None if METHODS[args.method] is None else {"model": "sdsat", "num_speculative_tokens": work.num_sat,
                                                      **METHODS[args.method]}
    trace = Path(tempfile.mkdtemp(prefix="sdsat_worker_steps_")) / "steps.jsonl"
    os.environ[TRACE_ENV] = str(trace)
    windows, runs = [], []
    llm = LLM(model=str(work.model_dir), speculative_config=spec, max_num_seqs=args.batch_size,
              **engine_kwargs(max_model_len=1024))
    try:
        for r in range(args.repeats):
            t0, w0 = time.monotonic(), time.perf_counter()
            outs = []
            for i in range(0, len(work.prompts), args.batch_size):
                outs += llm.generate(work.prompts[i:i + args.batch_size], work.sampling, use_tqdm=False)
            wall = time.perf_counter() - w0
            windows.append((t0, time.monotonic()))
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            runs.append({"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall})
    finally:
        shutdown_llm(llm)
        del llm
    steps = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    if not steps:
        raise SystemExit(f"no step was traced in {trace}: the worker did not import {__file__} "
                         "(vLLM's worker processes are expected to be spawned)")
    for r, (run, run_steps) in enumerate(zip(runs, split_runs(steps, windows))):
        run.update(summarize(run_steps), trace=run_steps)
        print(f"run {r}: {run['tokens']} tokens, {run['tokens_per_s']:.1f} tok/s, {run['steps']} steps, median plain "
              f"step {run['median_plain_step_ms'] or 0:.0f} ms, {run['steps_with_speculative_tokens']} steps with "
              f"speculative tokens ({run['their_ms']} ms), {run['decode_steps_over_3x_median']} decode steps over 3x "
              f"the median", flush=True)
    if args.out:
        meta = {"command": " ".join(sys.argv), "model": str(work.model_dir), "method": args.method,
                "speculative_config": spec, "prompt_set": args.prompt_set, "num_prompts": args.num_prompts,
                "batch_size": args.batch_size, "max_tokens": args.max_tokens, "machine": cpu_name(), "git": git,
                "engine": "vLLM default (engine core + worker processes)", "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
