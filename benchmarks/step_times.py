"""Every engine step of an SDSAT engine, timed: its tokens, its path (plain or speculative), its time.

    python benchmarks/step_times.py [MODEL] --prompt-set worst --num-prompts 8 --batch-size 1 \
        --max-tokens 64 [--lookup] [--out benchmarks/results/X.json]

What the adaptive policy's cost model (cost_model.OnlineCost) sees, laid out for a person: one
in-process vLLM engine (VLLM_ENABLE_V1_MULTIPROCESSING=0), the SDSAT proposer's hook wrapped so
that each step records its total scheduled tokens N, whether it went through vLLM's speculative
path (spec-decode metadata present: a draft or a SAT in it) and the wall time from the previous
step's proposal to this one's. Prints the median step time per (path, N) for the decode-only steps
and the cost model the drafter fitted at the end (a + bN, + c on the speculative path). No
profiler: the times are the engine's own, one run, read them against each other, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path


def by_path_and_size(steps: list[dict]) -> list[dict]:
    """[{speculative, tokens, steps, median_ms}] of the decode-only steps, by path then N."""
    groups: dict[tuple[bool, int], list[float]] = defaultdict(list)
    for s in steps:
        if s["decode_only"]:
            groups[(s["speculative"], s["tokens"])].append(1e3 * s["seconds"])
    return [{"speculative": spec, "tokens": n, "steps": len(ms), "median_ms": statistics.median(ms)}
            for (spec, n), ms in sorted(groups.items())]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--prompt-set", default="worst")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None, help="default: 1.0 on worst (seeded), else 0")
    p.add_argument("--lookup", action="store_true", help="lookup-backed drafts on (sdsat_lookup)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from sdsat_vllm.bench import (chat_formatter, cpu_name, engine_kwargs, git_state, observe_proposer, prompt_set,
                                  quiet_vllm, run_vllm)

    git = git_state(Path(__file__).resolve().parent)  # the code that runs: taken now, not after the run
    quiet_vllm()
    from vllm import SamplingParams

    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.vllm_plugin.proposer import decode_only

    model_dir = resolve_model(args.model or DEFAULT_SDSAT_MODEL)
    k = SDSATConfig.from_pretrained(model_dir).num_sat
    prompts, stop = prompt_set(args.prompt_set, args.num_prompts, 0, chat_formatter(model_dir))
    temp = args.temperature if args.temperature is not None else (1.0 if args.prompt_set == "worst" else 0.0)
    sampling = SamplingParams(temperature=temp, max_tokens=args.max_tokens, stop=stop, seed=0 if temp > 0 else None)
    spec = {"model": "sdsat", "num_speculative_tokens": k, "sdsat_policy": "adaptive", "sdsat_lookup": args.lookup}

    steps: list[dict] = []
    seen: dict = {}

    def timed(proposer, a, call):
        now, sched = time.perf_counter(), a["scheduler_output"]
        if seen.get("last") is not None and sched is not None:
            steps.append({"tokens": int(sched.total_num_scheduled_tokens),
                          "speculative": a["spec_decode_metadata"] is not None,
                          "decode_only": decode_only(sched.num_scheduled_tokens, sched.scheduled_spec_decode_tokens),
                          "seconds": now - seen["last"]})
        seen["last"], seen["proposer"] = now, proposer
        return call()

    with observe_proposer(timed):
        run = run_vllm(model_dir, spec, prompts, sampling, batch_sizes=[args.batch_size],
                       engine_kw={**engine_kwargs(max_model_len=2048), "max_num_seqs": max(args.batch_size, 4)})
    timed_run = run.runs[0]
    cost = seen["proposer"].drafter.cost()
    a = cost.time(0)
    fitted = {"a_ms": 1e3 * a, "b_ms": 1e3 * cost.marginal(1), "c_ms": 1e3 * cost.step_overhead,
              "b_over_a": cost.marginal(1) / a, "c_over_a": cost.step_overhead / a}
    table = by_path_and_size(steps)
    print(f"{args.prompt_set}, batch {args.batch_size}, lookup {args.lookup}: {timed_run.tokens} tokens, "
          f"{timed_run.tokens_per_s:.1f} tokens/s, {len(steps)} steps")
    print(f"{'path':>12} {'N':>4} {'steps':>6} {'median ms':>10}")
    for row in table:
        print(f"{'speculative' if row['speculative'] else 'plain':>12} {row['tokens']:4d} {row['steps']:6d} "
              f"{row['median_ms']:10.1f}")
    print("the drafter's cost model at the end: a {a_ms:.1f} ms, b {b_ms:.2f} ms a token ({b_over_a:.3f} of a), "
          "c {c_ms:.1f} ms ({c_over_a:.3f} of a)".format(**fitted))
    if args.out:
        meta = {"command": " ".join(sys.argv), "model": str(model_dir), "prompt_set": args.prompt_set,
                "num_prompts": args.num_prompts, "batch_size": args.batch_size, "max_tokens": args.max_tokens,
                "temperature": temp, "speculative_config": spec, "machine": cpu_name(),
                "git": git, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "tokens_per_s": timed_run.tokens_per_s,
                                              "by_path_and_size": table, "cost_model": fitted, "steps": steps},
                                             indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
