"""What a merged `lora` SDSAT model costs its users: how far its answers are from the base model's.

    python benchmarks/measure_merge.py [MODEL ...] [--num-prompts 164] [--num-norepeat 0] [--max-tokens 128]
        [--rows 32] [--out benchmarks/results/merge_smollm2-135m-sdsat_cpu.json]

MODEL: shipped SDSAT names (default: smollm2-135m-sdsat) or HF directories with the `sdsat` block,
all of one base model (the one their block names), which runs once. A `lora` adapter is merged into every weight, so
SDSAT's exact output is the merged model's, which is no longer the base model's; a `gated` adapter
leaves the standard weights unchanged (docs/design.md 1.1), so for it both figures are zero by
construction. Two figures:

* greedy outputs: plain vLLM decoding (no speculation) of the base model and of the merged model,
  same prompts, same engine settings, `max_tokens` tokens, no stop strings: the fraction of outputs
  that differ, where the first difference falls, the mean output length (a model that learned
  to end answers early shows here) and how much of each model's output repeats itself (the share
  of output tokens that end an 8-token sequence already in the same output: a model trained into
  loops shows here, and prompt lookup drafts such output well);
* perplexity on held-out text: the base model and the merged model (its SAT logits masked, as when
  serving) over the same tokens, with transformers in fp32: stdlib files of the held-out hash split
  (never trained on), and the held-out self-distilled rows (the base model's own completions).

Prompts: the first N HumanEval problems, the demo's prompts (sdsat_vllm/demo.py) and the first
`--num-norepeat` questions of the benchmark's norepeat set in the model's chat template.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from sdsat_vllm.bench import repeated_share

ROOT = Path(__file__).resolve().parents[1]
SELF_DISTILL_HELDOUT = ROOT / "data" / "smollm2-135m-self-distill.heldout.jsonl.gz"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=None,
                   help="SDSAT models of one base model (default: the shipped smollm2-135m-sdsat)")
    p.add_argument("--num-prompts", type=int, default=164, help="HumanEval prompts (the demo's are added)")
    p.add_argument("--num-norepeat", type=int, default=0, help="norepeat questions, in the chat template")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (same for both models)")
    p.add_argument("--rows", type=int, default=32, help="held-out rows of --seq-len tokens per text set")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="show vLLM's INFO logging")
    return p.parse_args(argv)


def compare_outputs(base: list[list[int]], merged: list[list[int]]) -> dict:
    """Differing outputs, where they first differ, lengths and self-repetition (both lists in prompt order)."""
    firsts = []
    for a, b in zip(base, merged):
        if a != b:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    n = len(base)
    return dict(outputs=n, differing=len(firsts), differing_fraction=len(firsts) / n,
                mean_first_difference=sum(firsts) / len(firsts) if firsts else None,
                mean_tokens_base=sum(map(len, base)) / n, mean_tokens_merged=sum(map(len, merged)) / n,
                repeated_share_base=repeated_share(base), repeated_share_merged=repeated_share(merged))


def heldout_rows(tokenizer, seq_len: int, rows: int) -> dict:
    """{set name: TokenRows} of held-out text the adapter never trained on."""
    from sdsat_vllm.training.data import corpus_files, is_heldout, pack_tokens

    stdlib = [f for f in corpus_files(()) if is_heldout(f, 0.05)]
    sets = {"stdlib_heldout_files": pack_tokens(tokenizer, stdlib, seq_len, seq_len * rows, "stdlib held-out")}
    if SELF_DISTILL_HELDOUT.is_file():
        sets["self_distill_heldout_rows"] = pack_tokens(tokenizer, [SELF_DISTILL_HELDOUT], seq_len, seq_len * rows,
                                                        "self-distilled held-out")
    return {k: v[:rows] for k, v in sets.items()}


def perplexity(model, rows, masked_ids: list[int]) -> float:
    """exp(mean NLL) over every token that may be predicted from its row (`TokenRows.label_ok`),
    the logits of `masked_ids` set to -inf first (SATs are never sampled when serving)."""
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(rows)):
            ids, ok = rows.ids[i:i + 1], rows.label_ok[i:i + 1]
            logits = model(input_ids=ids).logits[:, :-1].float()  # [1, L-1, V]
            if masked_ids:
                logits[..., masked_ids] = float("-inf")
            target = ids[:, 1:].masked_fill(~ok[:, 1:], -100)
            nll += F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum").item()
            count += int(ok[:, 1:].sum())
    return float(torch.exp(torch.tensor(nll / count)))


def main(argv=None) -> int:
    args = parse_args(argv)
    from sdsat_vllm.bench import cpu_name, engine_kwargs, humaneval_prompts, quiet_vllm, run_vllm

    quiet_vllm(args.verbose)
    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.demo import PROMPTS as DEMO_PROMPTS

    names = args.models or [DEFAULT_SDSAT_MODEL]
    merged_dirs = {name: resolve_model(name) for name in names}
    configs = {name: SDSATConfig.from_pretrained(d) for name, d in merged_dirs.items()}
    bases = {c.base_model for c in configs.values()}
    if len(bases) != 1:
        raise SystemExit(f"measure_merge.py compares models of one base model; these name {sorted(bases)}")
    base_dir = resolve_model(bases.pop())
    for name, d in merged_dirs.items():
        print(f"merged: {name}: {d} (train_mode {configs[name].train_mode})", flush=True)
    print(f"base:   {base_dir}", flush=True)

    from vllm import SamplingParams

    from sdsat_vllm.bench import chat_formatter, prompt_set

    sets = {"humaneval": [p for _, p in humaneval_prompts(args.num_prompts)], "demo": list(DEMO_PROMPTS)}
    if args.num_norepeat:
        sets["norepeat"] = prompt_set("norepeat", args.num_norepeat, chat=chat_formatter(base_dir))[0]
    sampling = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    kw = engine_kwargs(max_model_len=2048)
    per_model: dict = {name: {"greedy": {}, "perplexity": {}} for name in names}
    outputs = {}
    every = [p for prompts in sets.values() for p in prompts]
    for name, model_dir in (("base", base_dir), *merged_dirs.items()):
        print(f"plain vLLM decoding, {name} ...", flush=True)
        outputs[name] = run_vllm(model_dir, None, every, sampling, batch_sizes=[args.batch_size], engine_kw=kw).runs[0]
    for name in names:
        start = 0
        for set_name, prompts in sets.items():
            sl = slice(start, start + len(prompts))
            start += len(prompts)
            per_model[name]["greedy"][set_name] = compare_outputs(outputs["base"].token_ids[sl],
                                                                  outputs[name].token_ids[sl])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rows = heldout_rows(tokenizer, args.seq_len, args.rows)
    base_ppl = {}
    for name, model_dir in (("base", base_dir), *merged_dirs.items()):
        masked = [] if name == "base" else sorted(set(configs[name].sat_token_ids))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        for set_name, r in rows.items():
            print(f"perplexity, {name}, {set_name} ({len(r)} x {args.seq_len} tokens) ...", flush=True)
            ppl = perplexity(model, r, masked)
            if name == "base":
                base_ppl[set_name] = ppl
            else:
                per_model[name]["perplexity"][set_name] = {"base": base_ppl[set_name], "merged": ppl}
        del model

    for name in names:
        print(f"\n{name}")
        for set_name, g in per_model[name]["greedy"].items():
            first = "-" if g["mean_first_difference"] is None else f"{g['mean_first_difference']:.1f}"
            print(f"greedy, {set_name:<9}: {g['differing']}/{g['outputs']} outputs differ from the base model's "
                  f"({g['differing_fraction']:.0%}), first difference at token {first} on average; mean length "
                  f"base {g['mean_tokens_base']:.1f}, merged {g['mean_tokens_merged']:.1f} tokens; repeating "
                  f"itself: base {g['repeated_share_base']:.1%}, merged {g['repeated_share_merged']:.1%} of tokens")
        for set_name, ppl in per_model[name]["perplexity"].items():
            print(f"perplexity, {set_name}: base {ppl['base']:.3f}, merged {ppl['merged']:.3f} "
                  f"({ppl['merged'] / ppl['base'] - 1:+.1%})")
    # one model: the layout of earlier result files ({"greedy", "perplexity"} at the top)
    results = per_model[names[0]] if len(names) == 1 else {"models": per_model}

    if args.out:
        import transformers
        import vllm  # noqa: F401

        from sdsat_vllm.vllm_plugin.patches import installed_vllm_version

        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        meta = dict(command=" ".join(["benchmarks/measure_merge.py"] + (argv if argv is not None else sys.argv[1:])),
                    commit=commit, merged={n: str(d) for n, d in merged_dirs.items()}, base=str(base_dir),
                    sdsat={n: c.to_dict() for n, c in configs.items()},
                    max_tokens=args.max_tokens, batch_size=args.batch_size, rows=args.rows, seq_len=args.seq_len,
                    prompts={k: len(v) for k, v in sets.items()}, engine=kw,
                    machine=dict(cpu=cpu_name(), cores=os.cpu_count(), platform=platform.platform()),
                    vllm=installed_vllm_version(), torch=torch.__version__, transformers=transformers.__version__,
                    time=time.strftime("%Y-%m-%d %H:%M:%S"))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, **results}, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
