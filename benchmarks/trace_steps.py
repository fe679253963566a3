"""Step by step, what an SDSAT engine schedules and what each step costs: one in-process vLLM engine,
the same prompts `generate`d a few times, every engine step traced at the proposer.

    python benchmarks/trace_steps.py [MODEL] --prompt-set norepeat --num-prompts 64 --batch-size 64 \
        --max-tokens 64 [--method sdsat-adaptive-lookup] [--repeats 2] [--batching continuous] \
        [--length-spread 0.5] [--out benchmarks/results/X.json]

A benchmark's tokens/s says how far SDSAT is from plain decoding, not where the difference is; a
profile (profile_step_overhead.py) says which functions took the time, not on which steps. This
prints one line per step: the requests in the batch, the tokens scheduled (drafts and SAT tails on
top of one per request show up here), how many requests the proposer gave drafts or a tail for the
next step and how many tokens, the proposer's own time, and the step's wall time (from the previous
proposer call to this one: this step's scheduling, forward and sampling). Results 14.3
found with it that at batch 64 one step where every request probed cost ~9 plain steps; results 42
that a batch of 64 draining through the drafter's batch rungs (`--batching continuous --length-spread
0.5`) made every request decide afresh at each rung (the proposer's costliest steps, `proposer_top_ms`).
vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that the proposer is in reach.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

METHODS = {
    "sdsat": {"sdsat_policy": "fixed"},
    "sdsat-adaptive": {"sdsat_policy": "adaptive", "sdsat_lookup": False},
    "sdsat-adaptive-lookup": {"sdsat_policy": "adaptive", "sdsat_lookup": True},
}


def summarize(steps: list[dict]) -> dict:
    """Totals of one traced `generate`: steps, proposer seconds, and the decode steps that carried
    speculative tokens (more scheduled tokens than requests) against the rest."""
    decode = [s for s in steps if s["step_ms"] is not None and s["decode_only"]]
    spec = [s for s in decode if s["scheduled"] > s["requests"]]
    plain = [s for s in decode if s["scheduled"] <= s["requests"]]
    by_tokens: dict[int, list[float]] = {}
    for s in decode:
        by_tokens.setdefault(s["scheduled"], []).append(s["step_ms"])
    return {
        "steps": len(steps),
        "proposer_s": sum(s["proposer_ms"] for s in steps) / 1e3,
        "steps_with_speculative_tokens": len(spec),
        "speculative_tokens": sum(s["scheduled"] - s["requests"] for s in spec),
        "median_plain_step_ms": statistics.median(s["step_ms"] for s in plain) if plain else None,
        "speculative_steps_ms": [round(s["step_ms"], 1) for s in spec],
        # what a decode step costs by its size (at batch 1 the policy's StepTimes measures the same)
        "median_step_ms_by_tokens": {n: round(statistics.median(v), 2) for n, v in sorted(by_tokens.items())},
        "steps_by_tokens": {n: len(v) for n, v in sorted(by_tokens.items())},
        "median_proposer_ms": statistics.median(s["proposer_ms"] for s in steps) if steps else None,
        # the proposer's costliest steps (ms, step index, requests): where its time comes in bursts
        "proposer_top_ms": sorted(((round(s["proposer_ms"], 2), i, s["requests"]) for i, s in enumerate(steps)),
                                  reverse=True)[:8],
    }


def cost_model_of(proposer, batch_size: int) -> dict | None:
    """The adaptive drafter's cost model as it stands (T(N) knots in seconds, c) and kappa at
    batch_size, what one more token costs in tokens of plain decoding (policy.AdaptiveDrafter.lookup_may_pay)."""
    drafter = getattr(proposer, "drafter", None)
    if drafter is None:
        return None
    cost = drafter.cost()
    b = max(int(batch_size), 1)
    return {"knots": [list(k) for k in cost.knots], "step_overhead": cost.step_overhead,
            "kappa": round(b * cost.marginal(b) / cost.time(b), 3)}


def main(argv=None) -> int:
    from sdsat_vllm.bench import BATCHING

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--method", default="sdsat-adaptive-lookup", choices=sorted(METHODS))
    p.add_argument("-n", "--num-speculative-tokens", type=int, default=None, help="default: the model's K")
    p.add_argument("--prompt-set", default="norepeat")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None, help="default: 1.0 on worst (seeded), else 0")
    p.add_argument("--repeats", type=int, default=2, help="traced generate calls (after one warm-up)")
    p.add_argument("--batching", default="grouped", choices=sorted(BATCHING), help="; ".join(
        f"{k}: {v}" for k, v in BATCHING.items()))
    p.add_argument("--length-spread", type=float, default=0.0, help="each prompt's max_tokens drawn from "
                   "[M (1 - s), M (1 + s)], M = --max-tokens (sdsat_vllm.bench.spread_lengths)")
    p.add_argument("--quiet", action="store_true", help="totals only, no line per step")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.num_prompts < 1:
        p.error("--repeats, --batch-size and --num-prompts must be at least 1")
    if not 0.0 <= args.length_spread < 1.0:
        p.error(f"--length-spread must be in [0, 1), got {args.length_spread}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from sdsat_vllm.bench import (cpu_name, engine_kwargs, generate_batched, git_state, observe_proposer,
                                  one_set_workload, quiet_vllm, spread_lengths)

    git = git_state(Path(__file__).resolve().parent)
    quiet_vllm()
    from vllm import LLM

    from sdsat_vllm import vllm_plugin
    from sdsat_vllm.vllm_plugin import shutdown_llm
    from sdsat_vllm.vllm_plugin.proposer import decode_only

    work = one_set_workload(args.model, args.prompt_set, args.num_prompts, args.max_tokens, args.temperature,
                            args.num_speculative_tokens)
    model_dir, prompts, temp = work.model_dir, work.prompts, work.temperature
    sampling = spread_lengths(work.sampling, len(prompts), args.length_spread)  # spread 0: all max_tokens
    spec = {"model": "sdsat", "num_speculative_tokens": work.num_sat, **METHODS[args.method]}

    vllm_plugin.register()  # the patches first: the tracer wraps the proposer they call
    trace: list[dict] = []
    proposers: list = []  # the engine's proposer, to read its drafter's fitted cost model
    runs = []

    def traced(proposer, a, call):
        proposers[:] = [proposer]
        sched = a["scheduler_output"]
        t0 = time.perf_counter()
        out = call()
        t1 = time.perf_counter()
        # the step's time: from the previous proposer call to this one, the forward of the tokens
        # scheduled in this record among it
        step_ms = (t0 - trace[-1]["_t0"]) * 1e3 if trace else None
        trace.append({"_t0": t0, "requests": len(a["sampled_token_ids"]),
                      "scheduled": int(sched.total_num_scheduled_tokens) if sched else -1,
                      "decode_only": sched is not None and decode_only(
                          sched.num_scheduled_tokens, sched.scheduled_spec_decode_tokens),
                      "next_requests_speculating": sum(1 for o in out if o),
                      "next_speculative_tokens": sum(len(o) for o in out),
                      "proposer_ms": (t1 - t0) * 1e3, "step_ms": step_ms})
        return out

    with observe_proposer(traced):
        llm = LLM(model=str(model_dir), speculative_config=spec, max_num_seqs=args.batch_size,
                  **engine_kwargs(max_model_len=2048))
        try:
            # warm-up (and the policy's first steps)
            llm.generate(prompts[:args.batch_size], sampling[:args.batch_size], use_tqdm=False)
            for r in range(args.repeats):
                trace.clear()
                t0 = time.perf_counter()
                outs = generate_batched(llm, prompts, sampling, args.batch_size, args.batching)
                wall = time.perf_counter() - t0
                steps = [{key: v for key, v in s.items() if key != "_t0"} for s in trace]
                tokens = sum(len(o.outputs[0].token_ids) for o in outs)
                run = {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, **summarize(steps),
                       "cost_model": cost_model_of(proposers[0] if proposers else None, args.batch_size),
                       "trace": steps}
                runs.append(run)
                print(f"run {r}: {tokens} tokens, {tokens / wall:.1f} tok/s, {run['steps']} steps, proposer "
                      f"{run['proposer_s']:.3f} s, {run['steps_with_speculative_tokens']} steps with speculative tokens "
                      f"({run['speculative_tokens']} tokens; {run['speculative_steps_ms']} ms against a median plain "
                      f"step of {run['median_plain_step_ms'] or 0:.1f} ms); cost model {run['cost_model']}", flush=True)
                print(f"  proposer: median {run['median_proposer_ms'] or 0:.2f} ms a step; costliest steps (ms, step, "
                      f"requests): {run['proposer_top_ms']}")
                print("  median step ms by scheduled tokens (steps):", {n: (run["steps_by_tokens"][n], ms) for n, ms in
                                                                       run["median_step_ms_by_tokens"].items()})
                if not args.quiet:
                    for i, s in enumerate(steps):
                        print(f"  step {i:4d} requests {s['requests']:3d} scheduled {s['scheduled']:5d} next: "
                              f"{s['next_requests_speculating']:3d} requests {s['next_speculative_tokens']:4d} tokens  "
                              f"proposer {s['proposer_ms']:7.2f} ms  step {s['step_ms'] or float('nan'):8.1f} ms")
        finally:
            shutdown_llm(llm)
            del llm
    if args.out:
        meta = {"command": " ".join(sys.argv), "model": str(model_dir), "method": args.method,
                "speculative_config": spec, "prompt_set": args.prompt_set, "num_prompts": args.num_prompts,
                "batch_size": args.batch_size, "max_tokens": args.max_tokens, "temperature": temp,
                "batching": args.batching, "length_spread": args.length_spread,
                "machine": cpu_name(), "git": git, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
