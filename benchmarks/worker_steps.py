"""Step by step, in vLLM's default engine (engine core and worker in their own processes): each
step's scheduled tokens and times, taken inside the worker, for plain decoding or SDSAT.

    python benchmarks/worker_steps.py [MODEL] --method sdsat-adaptive --prompt-set norepeat \
        --num-prompts 64 --batch-size 64 --max-tokens 64 [--repeats 3] [--batching continuous] \
        [--out benchmarks/results/X.json]

trace_steps.py sees the proposer, but only with the engine in one process; the three-process engine,
which `LLM` and `vllm serve` use by default, keeps the worker out of reach. This script wraps the
model runner's `execute_model` and `sample_tokens` and the engine core's `step` at import, so the
engine processes (spawned: they import this file again) append one line per step to a trace file: the
tokens scheduled (drafts and SAT tails show up as more tokens than requests), the forward's time, the
sampling half's (rejection sampler and proposer), and the engine core's whole step (scheduler and
output bookkeeping too); what the engine core's steps leave of the wall time is the front end's. With
`--batching continuous` each run also has its requests' mean latency (admission to end): a batch lasts
as long as its slowest slot, so drafts that end some requests early show there first. Nothing is warmed up first: the first
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
    # lookups in the request's own text only: what the shipped datastore adds (or costs) under load
    "sdsat-adaptive-textlookup": {"sdsat_policy": "adaptive", "sdsat_lookup": True, "sdsat_datastore": "none"},
}


def _install_step_trace(path: str) -> None:
    """Wrap the model runner's two halves of a step (CPUModelRunner inherits both from GPUModelRunner)
    and the engine core's step. The worker appends, per step, {"t": monotonic start, "n": scheduled
    tokens, "requests", "decode": no prefill in it, "ms": the forward (`execute_model`), "sample_ms":
    sampling, rejection and the proposer (`sample_tokens`, where vLLM calls `propose_draft_token_ids`)}
    to `path`; the engine core appends {"t", "n", "ms": the whole `EngineCore.step`: schedule, both
    halves, `update_from_output`} to `path` + ".engine"."""
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from sdsat_vllm.vllm_plugin.proposer import decode_only

    def append(file: str, line: dict) -> None:
        with open(file, "a") as fh:
            fh.write(json.dumps(line) + "\n")

    forward, sample, step = GPUModelRunner.execute_model, GPUModelRunner.sample_tokens, EngineCore.step
    pending: dict = {}  # the step whose forward ran and whose sampling has not yet

    @functools.wraps(forward)  # keeps the signature the SDSAT patch registry checks
    def execute_model(self, scheduler_output, *args, **kwargs):
        t0 = time.monotonic()
        out = forward(self, scheduler_output, *args, **kwargs)
        per_request = scheduler_output.num_scheduled_tokens
        line = {"t": t0, "n": int(scheduler_output.total_num_scheduled_tokens), "requests": len(per_request),
                "decode": bool(per_request) and decode_only(per_request, scheduler_output.scheduled_spec_decode_tokens),
                "ms": (time.monotonic() - t0) * 1e3}
        if out is None:  # vLLM samples in sample_tokens
            pending["line"] = line
        else:
            append(path, line)
        return out

    @functools.wraps(sample)
    def sample_tokens(self, *args, **kwargs):
        t0 = time.monotonic()
        out = sample(self, *args, **kwargs)
        line = pending.pop("line", None)
        if line is not None:
            append(path, {**line, "sample_ms": (time.monotonic() - t0) * 1e3})
        return out

    @functools.wraps(step)
    def engine_step(self, *args, **kwargs):
        t0 = time.monotonic()
        outputs, executed = step(self, *args, **kwargs)
        if executed:
            append(path + ".engine", {"t": t0, "ms": (time.monotonic() - t0) * 1e3})
        return outputs, executed

    GPUModelRunner.execute_model, GPUModelRunner.sample_tokens, EngineCore.step = \
        execute_model, sample_tokens, engine_step


if os.environ.get(TRACE_ENV) and __name__ != "__main__":  # a spawned engine process
    _install_step_trace(os.environ[TRACE_ENV])


def split_runs(steps: list[dict], windows: list[tuple[float, float]]) -> list[list[dict]]:
    """The traced steps of each timed `generate` (monotonic time is shared by the processes)."""
    return [[s for s in steps if lo <= s["t"] <= hi] for lo, hi in windows]


def summarize(steps: list[dict], engine_steps: list[dict], wall_s: float) -> dict:
    """Decode steps (no prefill in them): the plain ones (one token a request) against the ones that
    carried speculative tokens (more tokens than requests), and how many took over 3x the median; the
    worker's forward and sampling halves; the engine core's whole steps and their share of the wall
    time (the rest: the front end and the hand-over between processes)."""
    decode = [s for s in steps if s["decode"]]
    plain = [s for s in decode if s["n"] <= s["requests"]]
    spec = [s for s in decode if s["n"] > s["requests"]]
    med = statistics.median([s["ms"] for s in plain]) if plain else None

    def median_of(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return round(statistics.median(values), 2) if values else None

    engine_ms = sum(s["ms"] for s in engine_steps)
    return {"steps": len(steps), "decode_steps": len(decode), "median_plain_step_ms": med,
            "decode_steps_over_3x_median": sum(1 for s in decode if med and s["ms"] > 3 * med),
            "steps_with_speculative_tokens": len(spec), "their_ms": [round(s["ms"]) for s in spec],
            "median_sample_ms": {"plain": median_of(plain, "sample_ms"), "speculative": median_of(spec, "sample_ms")},
            "worker_ms": round(sum(s["ms"] + s.get("sample_ms", 0.0) for s in steps)),
            "engine_steps": len(engine_steps), "engine_ms": round(engine_ms),
            "median_engine_step_ms": median_of(engine_steps, "ms"),
            "engine_share_of_wall": round(engine_ms / 1e3 / wall_s, 3) if wall_s > 0 else None}


def breakdown(run: dict) -> dict:
    """Where one timed run's wall time went, in ms: the worker's forwards, its sampling halves
    (rejection sampler and proposer), the rest of the engine core's steps (scheduler, output
    bookkeeping) and what lies outside them (the front end, the hand-over between processes)."""
    forward = sum(s["ms"] for s in run["trace"])
    sample = sum(s.get("sample_ms", 0.0) for s in run["trace"])
    return {"forward": forward, "sample": sample, "engine_rest": run["engine_ms"] - forward - sample,
            "outside_engine": run["wall_s"] * 1e3 - run["engine_ms"], "wall": run["wall_s"] * 1e3}


def compare(results: list[dict]) -> list[dict]:
    """Pool the runs of several result files (e.g. plain, sdsat, sdsat, plain: ABBA order) by method,
    prompt set and batch size: mean tokens/s, its ratio to plain's in the same set and batch size, and
    the mean breakdown per run. The first run of each file (the engine's first, cold) is left out
    when a file has more than one."""
    pooled: dict[tuple, list[dict]] = {}
    for result in results:
        m = result["meta"]
        runs = result["runs"][1:] if len(result["runs"]) > 1 else result["runs"]
        pooled.setdefault((m["prompt_set"], m["batch_size"], m["method"]), []).extend(runs)
    rows = []
    for (prompt_set, batch, method), runs in sorted(pooled.items()):
        parts = [breakdown(r) for r in runs]
        latency = [r["mean_request_s"] for r in runs if r.get("mean_request_s") is not None]
        rows.append({"prompt_set": prompt_set, "batch_size": batch, "method": method, "runs": len(runs),
                     "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in runs),
                     "mean_request_s": statistics.mean(latency) if len(latency) == len(runs) else None,
                     "steps": statistics.mean(r["steps"] for r in runs),
                     **{f"{k}_ms": statistics.mean(p[k] for p in parts) for k in parts[0]}})
    plain = {(r["prompt_set"], r["batch_size"]): r for r in rows if r["method"] == "plain"}
    for r in rows:
        base = plain.get((r["prompt_set"], r["batch_size"]))
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        # > 1: requests end sooner on average than plain decoding's (plain's mean latency over this one's)
        r["latency_speedup"] = (base["mean_request_s"] / r["mean_request_s"]
                                if base and base["mean_request_s"] and r["mean_request_s"] else None)
    return rows


def compare_table(rows: list[dict]) -> str:
    head = ("| set | B | method | runs | tok/s | vs plain | mean request s | vs plain | steps | forward ms | "
            "sampling ms | rest of engine step ms | outside engine ms | wall ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        speedup = f"{r['speedup']:.3f}x" if r["speedup"] else "-"
        latency = f"{r['mean_request_s']:.2f}" if r.get("mean_request_s") else "-"
        latency_speedup = f"{r['latency_speedup']:.3f}x" if r.get("latency_speedup") else "-"
        lines.append(f"| {r['prompt_set']} | {r['batch_size']} | {r['method']} | {r['runs']} | "
                     f"{r['tokens_per_s']:.1f} | {speedup} | {latency} | {latency_speedup} | {r['steps']:.0f} | "
                     f"{r['forward_ms']:.0f} | "
                     f"{r['sample_ms']:.0f} | {r['engine_rest_ms']:.0f} | {r['outside_engine_ms']:.0f} | "
                     f"{r['wall_ms']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from sdsat_vllm.bench import BATCHING

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--method", default="sdsat-adaptive", choices=sorted(METHODS))
    p.add_argument("--prompt-set", default="norepeat")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls, the first one cold")
    p.add_argument("--batching", default="grouped", choices=sorted(BATCHING), help="; ".join(
        f"{k}: {v}" for k, v in BATCHING.items()))
    p.add_argument("--length-spread", type=float, default=0.0, help="each prompt's max_tokens drawn from "
                   "[M (1 - s), M (1 + s)] (M = --max-tokens): outputs of varied length, as a server sees them "
                   "(sdsat_vllm.bench.spread_lengths)")
    p.add_argument("--out", default=None)
    p.add_argument("--compare", nargs="+", metavar="RESULT", default=None,
                   help="no engine: pool these result files (e.g. ABBA order) and print where the time went")
    args = p.parse_args(argv)
    if args.compare:
        results = [json.loads(Path(f).read_text()) for f in args.compare]
        rows = compare(results)
        print(compare_table(rows))
        if args.out:  # each file's own command, commit, machine and time come along
            Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows, "sources": [
                {"file": f, **r["meta"]} for f, r in zip(args.compare, results)]}, indent=1))
        return 0
    if args.repeats < 1 or args.batch_size < 1 or args.num_prompts < 1:
        p.error("--repeats, --batch-size and --num-prompts must be at least 1")
    if not 0.0 <= args.length_spread < 1.0:
        p.error(f"--length-spread must be in [0, 1), got {args.length_spread}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from sdsat_vllm.bench import (cpu_name, engine_kwargs, generate_batched, git_state, one_set_workload, quiet_vllm,
                                  spread_lengths)
    from sdsat_vllm.vllm_plugin import shutdown_llm

    git = git_state(Path(__file__).resolve().parent)
    quiet_vllm()
    from vllm import LLM

    work = one_set_workload(args.model, args.prompt_set, args.num_prompts, args.max_tokens)
    sampling = spread_lengths(work.sampling, len(work.prompts), args.length_spread)  # spread 0: all max_tokens
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
            latencies: dict[int, float] = {}
            outs = generate_batched(llm, work.prompts, sampling, args.batch_size, args.batching, latencies)
            wall = time.perf_counter() - w0
            windows.append((t0, time.monotonic()))
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            runs.append({"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                         # continuous batching: each request's admission to its end (grouped: none)
                         "mean_request_s": statistics.mean(latencies.values()) if latencies else None})
    finally:
        shutdown_llm(llm)
        del llm
    steps, engine_steps = ([json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []
                           for f in (trace, Path(f"{trace}.engine")))
    if not steps:
        raise SystemExit(f"no step was traced in {trace}: the worker did not import {__file__} "
                         "(vLLM's worker processes are expected to be spawned)")
    for r, (run, run_steps, run_engine) in enumerate(zip(runs, split_runs(steps, windows),
                                                          split_runs(engine_steps, windows))):
        run.update(summarize(run_steps, run_engine, run["wall_s"]), trace=run_steps)
        print(f"run {r}: {run['tokens']} tokens, {run['tokens_per_s']:.1f} tok/s, {run['steps']} steps, median plain "
              f"step {run['median_plain_step_ms'] or 0:.0f} ms, {run['steps_with_speculative_tokens']} steps with "
              f"speculative tokens ({run['their_ms']} ms), {run['decode_steps_over_3x_median']} decode steps over 3x "
              f"the median; sampling + proposer median {run['median_sample_ms']} ms; engine core steps "
              f"{run['engine_ms']} ms of the wall ({run['engine_share_of_wall']}), median "
              f"{run['median_engine_step_ms']} ms"
              + (f"; mean request {run['mean_request_s']:.2f} s" if run["mean_request_s"] is not None else ""),
              flush=True)
    if args.out:
        meta = {"command": " ".join(sys.argv), "model": str(work.model_dir), "method": args.method,
                "speculative_config": spec, "prompt_set": args.prompt_set, "num_prompts": args.num_prompts,
                "batch_size": args.batch_size, "batching": args.batching, "max_tokens": args.max_tokens,
                "length_spread": args.length_spread, "machine": cpu_name(), "git": git,
                "engine": "vLLM default (engine core + worker processes)", "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
