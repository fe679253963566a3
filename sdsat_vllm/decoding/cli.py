"""`sdsat generate MODEL --prompt TEXT [--mode fused] ...`: the transformers SDSAT engine from the shell.

MODEL is a shipped SDSAT model (e.g. smollm2-135m-sdsat), a name known to `sdsat fetch`, an HF model
directory carrying the `sdsat` block, or a .gguf file. The generated text goes to stdout, the metrics
to stderr (or everything as JSON with --json). With --compare-ar the same prompt is also decoded plainly (`ar`) and the speedup is printed as a
same-run ratio.
"""

from __future__ import annotations

import argparse
import json
import sys

MODES = ("ar", "two_step", "fused", "tree", "topk_tree")  # kept in sync with generator.MODES (tested)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="SDSAT model name (e.g. smollm2-135m-sdsat), HF directory or .gguf file")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to continue")
    src.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    parser.add_argument("--mode", default="fused", choices=MODES, help="decoding mode (default: fused)")
    parser.add_argument("--num-sat", type=int, default=None, help="K, SATs per block (default: the model's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--tree-shape", default=None,
                        help="topk_tree only: widths per depth '3,2,1' or JSON paths '[[0],[1],[0,0]]'")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, "
                                                      "bfloat16 on GPU)")
    parser.add_argument("--compare-ar", action="store_true", help="also decode with `ar` and print the speedup")
    parser.add_argument("--json", action="store_true", help="print text and metrics as one JSON object")


def run(args: argparse.Namespace) -> int:
    import torch

    from .generator import SDSATGenerator
    from .tree import parse_tree_shape

    prompt = args.prompt
    if prompt is None:
        prompt = sys.stdin.read() if args.prompt_file == "-" else open(args.prompt_file, encoding="utf-8").read()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    gen = SDSATGenerator.from_pretrained(args.model, device=device, dtype=dtype)
    kwargs = dict(num_sat=args.num_sat, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  max_new_tokens=args.max_new_tokens, stop=args.stop, seed=args.seed, ignore_eos=args.ignore_eos)
    shape = parse_tree_shape(args.tree_shape) if args.tree_shape else None
    try:
        if args.compare_ar:  # warm up both paths so that neither timing carries first-call costs
            for mode in dict.fromkeys([args.mode, "ar"]):
                gen.generate(prompt, mode=mode, tree_shape=shape if mode == "topk_tree" else None,
                             **{**kwargs, "max_new_tokens": min(8, args.max_new_tokens)})
        out = gen.generate(prompt, mode=args.mode, tree_shape=shape, **kwargs)
        base = gen.generate(prompt, mode="ar", **kwargs) if args.compare_ar and args.mode != "ar" else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    speedup = None
    if base is not None and base.metrics.tokens_per_s > 0:
        speedup = out.metrics.tokens_per_s / base.metrics.tokens_per_s
    if args.json:
        doc = {"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
               "metrics": out.metrics.to_dict()}
        if base:
            doc.update(ar_metrics=base.metrics.to_dict(), speedup=speedup, same_as_ar=base.token_ids == out.token_ids)
        print(json.dumps(doc, indent=2))
        return 0
    print(out.text)
    print(out.metrics.summary() + f"  finish={out.finish_reason}", file=sys.stderr)
    if base:
        same = "same tokens" if base.token_ids == out.token_ids else "different tokens (expected only when sampling)"
        print(base.metrics.summary(), file=sys.stderr)
        print(f"speedup vs ar (same run): {speedup or 0:.2f}x, tau {out.metrics.tokens_per_forward:.2f} vs 1.00; {same}", file=sys.stderr)
    return 0
