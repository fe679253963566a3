"""What the gate of a gated SDSAT model costs a forward in vLLM (issue 9, point 4).

    python benchmarks/measure_gate_cost.py GATED_MODEL_DIR [--max-tokens 64] [--num-prompts 6]
        [--out benchmarks/results/gate_cost_cpu.json]

A gated model is served with vLLM's LoRA layers, the adapter mapped to the step's SAT tokens only
(docs/design.md, section 4.6). Plain decoding (no speculation) of the same directory, batch 1, the
demo's prompts, greedy, three ways in one run:

* plain:        no LoRA at all (the base model's decoding; what SDSAT's output equals);
* lora_idle:    LoRA enabled with the adapter's rank, no adapter active (the LoRA layers' own cost);
* delta_all:    the adapter on every token (a request-level LoRA): the most the gate could cost,
                since under SDSAT only the SAT rows (at most n per request per forward) carry it.

Tokens/s of each, and each as a ratio of plain: the gate's cost per forward lies between lora_idle
and delta_all. Outputs of plain and lora_idle must be identical (no delta anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a gated SDSAT model directory (train_mode gated, with sdsat_vllm_lora/)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=6)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="show vLLM's INFO logging")
    return p.parse_args(argv)


def timed(llm, prompts, sampling, lora_request=None) -> dict:
    """Batch 1, after a warm-up: wall time, tokens, tokens/s, token ids."""
    llm.generate(prompts[:1], sampling, lora_request=lora_request, use_tqdm=False)
    start = time.perf_counter()
    ids = [list(llm.generate([p], sampling, lora_request=lora_request, use_tqdm=False)[0].outputs[0].token_ids)
           for p in prompts]
    wall = time.perf_counter() - start
    tokens = sum(map(len, ids))
    return dict(wall_s=wall, tokens=tokens, tokens_per_s=tokens / wall, token_ids=ids)


def ratios(rows: dict) -> dict:
    """Each row's tokens/s as a ratio of the plain row's."""
    base = rows["plain"]["tokens_per_s"]
    return {name: r["tokens_per_s"] / base for name, r in rows.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    from sdsat_vllm.bench import cpu_name, engine_kwargs, git_state, quiet_vllm

    git = git_state(ROOT)  # the code that runs: taken now, not after the run

    quiet_vllm(args.verbose)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from sdsat_vllm.config import SDSATConfig, gated_vllm_lora
    from sdsat_vllm.demo import PROMPTS
    from sdsat_vllm.vllm_plugin import shutdown_llm

    model = Path(args.model)
    if SDSATConfig.from_pretrained(model).train_mode != "gated":
        raise SystemExit(f"{model} is not a gated SDSAT model")
    lora_dir, rank = gated_vllm_lora(model)
    prompts = (PROMPTS * (1 + args.num_prompts // len(PROMPTS)))[: args.num_prompts]
    sampling = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    kw = {**engine_kwargs(max_model_len=1024), "max_num_seqs": 4}
    rows = {}
    print("plain (no LoRA) ...", flush=True)
    llm = LLM(model=str(model), **kw)
    rows["plain"] = timed(llm, prompts, sampling)
    shutdown_llm(llm)
    print(f"LoRA enabled (rank {rank}): idle, then the adapter on every token ...", flush=True)
    llm = LLM(model=str(model), enable_lora=True, max_lora_rank=max(8, rank), **kw)
    rows["lora_idle"] = timed(llm, prompts, sampling)
    rows["delta_all"] = timed(llm, prompts, sampling, LoRARequest("sdsat-gate", 1, str(lora_dir)))
    shutdown_llm(llm)
    same = rows["plain"]["token_ids"] == rows["lora_idle"]["token_ids"]
    rel = ratios(rows)
    print()
    for name, r in rows.items():
        print(f"  {name:10s}: {r['tokens']} tokens in {r['wall_s']:.2f} s = {r['tokens_per_s']:.1f} tokens/s "
              f"({rel[name]:.2f}x plain)")
    print(f"  plain and lora_idle outputs identical: {same}")
    if args.out:
        import torch

        from sdsat_vllm.vllm_plugin.patches import installed_vllm_version

        meta = dict(command=" ".join(["benchmarks/measure_gate_cost.py"] + (argv if argv is not None else sys.argv[1:])),
                    **git, model=str(model), rank=rank, max_tokens=args.max_tokens, prompts=len(prompts),
                    batch_size=1, engine=kw, machine=dict(cpu=cpu_name(), cores=os.cpu_count(),
                                                         platform=platform.platform()),
                    vllm=installed_vllm_version(), torch=torch.__version__, time=time.strftime("%Y-%m-%d %H:%M:%S"))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "ratio_to_plain": rel, "identical_plain_lora_idle": same,
                                   "rows": {k: {x: y for x, y in r.items() if x != "token_ids"} for k, r in rows.items()}},
                                  indent=2))
        print(f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
