"""Where an engine's time goes, by sampling its stacks (py-spy) instead of tracing every call (cProfile):
one in-process vLLM engine per method, the same prompts, B requests in flight.

    python benchmarks/sampled_profile.py [MODEL] --methods plain sdsat-adaptive-lookup --prompt-set norepeat \
        --num-prompts 64 --batch-size 16 [--rate 250] [--out benchmarks/results/X.json]

Why beside profile_step_overhead.py: cProfile charges every Python call, so it inflates exactly the part
in question, the proposer's per-request Python, against the forward's C++ kernels (results 41: at batch 16
cProfile put the SDSAT proposer at 3.2 ms a step, 3.6% of the run; sampled, it was 0.8% of it). py-spy
(`pip install py-spy`, not a project dependency) samples the main thread's stack RATE times a second from
outside the process. A part's share is the fraction of the samples taken inside the timed `generate`
calls whose stack holds the part's function (parts nest: the proposer is inside the sampling half).
The engine runs once untimed first (start-up and warm-up are not sampled into the shares).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: (label, the function a sample's stack must hold: py-spy's frame name, "Class.method" or "function")
PARTS = (
    ("model forward", "GPUModelRunner._model_forward"),
    ("  logits (lm_head)", "LogitsProcessor.forward"),
    ("sampling half", "GPUModelRunner.sample_tokens"),
    ("  greedy sampler", "Sampler.greedy_sample"),
    ("  rejection sampler", "RejectionSampler.forward"),
    ("  SDSAT proposer", "SDSATProposer.sdsat_propose_with_context"),
    ("    lookups", "lookup_chains"),
    ("    policy decisions", "AdaptiveDrafter.decide"),
    ("  SAT-logit observer", "SDSATProposer._observe_logits"),
    ("prepare inputs", "GPUModelRunner._prepare_inputs"),
    ("scheduler", "Scheduler.schedule"),
    ("scheduler output bookkeeping", "Scheduler.update_from_output"),
)
#: the function every timed sample's stack holds (sdsat_vllm.bench.generate_continuous)
REGION = "generate_continuous"
RUN_FLAG = "--run-under-spy"


def frame_name(frame: str) -> str:
    """py-spy's raw frame "Class.method (path/file.py:123)" -> "Class.method"."""
    return frame.split(" (", 1)[0]


def shares(lines, parts=PARTS, region: str = REGION) -> dict:
    """{"samples": in the region, "parts": {label: share of them}} from py-spy's raw (collapsed) output:
    one "frame;frame;...;frame COUNT" line per distinct stack, outermost frame first."""
    total, hits = 0, {label: 0 for label, _ in parts}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = {frame_name(f) for f in stack.split(";")}
        if region not in names:
            continue
        total += int(count)
        for label, func in parts:
            if func in names:  # whole names: "Sampler.forward" is not "RejectionSampler.forward"
                hits[label] += int(count)
    return {"samples": total, "parts": {k: (v / total if total else 0.0) for k, v in hits.items()}}


def _run(args, extra: dict | None) -> None:
    """The child py-spy samples: one engine (extra: worker_steps' speculative options of the method), an
    untimed run, then the timed ones."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: engine core and worker in reach
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from sdsat_vllm.bench import engine_kwargs, generate_continuous, one_set_workload, quiet_vllm
    from sdsat_vllm.vllm_plugin import shutdown_llm

    quiet_vllm()
    from vllm import LLM

    work = one_set_workload(args.model, args.prompt_set, args.num_prompts, args.max_tokens)
    spec = None if extra is None else {"model": "sdsat", "num_speculative_tokens": work.num_sat, **extra}
    llm = LLM(model=str(work.model_dir), speculative_config=spec, max_num_seqs=args.batch_size,
              **engine_kwargs(max_model_len=1024))
    try:
        # untimed: the first run, outside the region (LLM.generate, not generate_continuous)
        llm.generate(work.prompts[:args.batch_size], work.sampling, use_tqdm=False)
        t0 = time.perf_counter()
        tokens = 0
        for _ in range(args.repeats):
            outs = generate_continuous(llm, work.prompts, work.sampling, args.batch_size)
            tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        print(json.dumps({"tokens": tokens, "wall_s": time.perf_counter() - t0}), flush=True)
    finally:
        shutdown_llm(llm)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--methods", nargs="+", default=["plain", "sdsat-adaptive-lookup"])
    p.add_argument("--prompt-set", default="norepeat")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the prompts")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    p.add_argument("--out", default=None)
    p.add_argument(RUN_FLAG, dest="run", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker_steps' METHODS
    from worker_steps import METHODS

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    if args.batch_size < 1 or args.num_prompts < 1 or args.repeats < 1 or args.rate < 1:
        p.error("--batch-size, --num-prompts, --repeats and --rate must be at least 1")
    if args.run:
        _run(args, METHODS[args.methods[0]])
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        p.error("py-spy is not installed: pip install py-spy (it samples the engine from outside the process)")
    from sdsat_vllm.bench import cpu_name, git_state

    git = git_state(Path(__file__).resolve().parent)
    results = {}
    with tempfile.TemporaryDirectory(prefix="sdsat_spy_") as tmp:
        for method in args.methods:
            raw = Path(tmp) / f"{method}.txt"
            child = [sys.executable, __file__, RUN_FLAG, "--methods", method, "--prompt-set", args.prompt_set,
                     "--num-prompts", str(args.num_prompts), "--batch-size", str(args.batch_size),
                     "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats)]
            if args.model:
                child.insert(2, args.model)
            done = subprocess.run([spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--", *child],
                                  capture_output=True, text=True)
            run = next((json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"tokens"')), None)
            if done.returncode != 0 or run is None or not raw.exists():
                print(done.stdout[-2000:] + done.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{method}: the sampled run failed (exit {done.returncode})")
            results[method] = {**run, **shares(raw.read_text().splitlines())}
    print(f"{'part (share of the timed samples)':34}" + "".join(f"{m:>24}" for m in results))
    for label, _ in PARTS:
        print(f"{label:34}" + "".join(f"{r['parts'][label]:24.2%}" for r in results.values()))
    print(f"{'samples':34}" + "".join(f"{r['samples']:24}" for r in results.values()))
    print(f"{'tokens/s (under sampling)':34}" + "".join(f"{r['tokens'] / r['wall_s']:24.1f}" for r in results.values()))
    if args.out:
        meta = {"command": " ".join(sys.argv), "prompt_set": args.prompt_set, "num_prompts": args.num_prompts,
                "batch_size": args.batch_size, "max_tokens": args.max_tokens, "rate": args.rate,
                "machine": cpu_name(), "git": git, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
