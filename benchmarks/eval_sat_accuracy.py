"""How well do a model's SATs draft? Teacher-forced SAT accuracy per offset on held-out stdlib files
(or on the held-out files given with --heldout-sources, e.g. `sdsat make-data`'s `.heldout.jsonl`).

For each SAT offset j (1..K):
  acc   = SAT argmax equals the true next-next token (what the training loss aims at);
  agree = SAT argmax equals the model's own argmax at the standard position predicting the same
          token (a teacher-forced proxy for the draft acceptance rate under greedy decoding).
The untrained baseline (the base model with freshly mean-initialised SATs) is measured in the same
run, on the same held-out rows and insertion points.

    python benchmarks/eval_sat_accuracy.py --model runs/smollm2-135m-lora-k5/model --base smollm2-135m
    python benchmarks/eval_sat_accuracy.py --model smollm2-135m-sdsat \
        --heldout-sources data/smollm2-135m-self-distill.heldout.jsonl.gz --blocks-per-seq 64
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="SDSAT model: HF directory or shipped name (smollm2-135m-sdsat)")
    ap.add_argument("--base", default=None, help="base model to measure the untrained baseline on (optional)")
    ap.add_argument("--rows", type=int, default=64, help="held-out sequences to evaluate")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--blocks-per-seq", type=int, default=24)
    ap.add_argument("--heldout-sources", nargs="*", default=None,
                    help="held-out files or directories to evaluate on (default: the stdlib's held-out split)")
    ap.add_argument("--sat-blocks", choices=["all", "drafted"], default="all",
                    help="where SAT blocks stand: anywhere in the packed rows, or only where the next token is "
                         "drafted in serving (not in a make-data row's prompt; `sdsat train --sat-blocks`)")
    ap.add_argument("--max-answer-tokens", type=int, default=None,
                    help="crop make-data rows to their prompt + the first N answer tokens "
                         "(`sdsat train --max-answer-tokens`; with --heldout-sources)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the result JSON here")
    args = ap.parse_args()
    if args.max_answer_tokens is not None and not args.heldout_sources:
        ap.error("--max-answer-tokens crops make-data rows: it needs --heldout-sources (the stdlib has no prompts)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from sdsat_vllm.adapters import resolve_model
    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.training.data import DataConfig, corpus_files, load_datasets, pack_tokens
    from sdsat_vllm.training.gated import load_model_dir
    from sdsat_vllm.training.sat_setup import add_sat_tokens
    from sdsat_vllm.training.trainer import TrainConfig, evaluate, load_base

    model_dir = resolve_model(args.model)
    sdsat = SDSATConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = DataConfig(seq_len=args.seq_len, max_train_tokens=args.seq_len)  # only the held-out split is used
    if args.heldout_sources:
        heldout = pack_tokens(tok, corpus_files(tuple(args.heldout_sources)), args.seq_len,
                              args.rows * args.seq_len, "tokenize held-out", args.max_answer_tokens)
    else:
        _, heldout = load_datasets(data, tok)
    heldout = heldout[: args.rows]
    cfg = TrainConfig(model=str(model_dir), output_dir="-", mode="full", num_sat=sdsat.num_sat, batch_size=4,
                      blocks_per_seq=args.blocks_per_seq, dtype="fp32", data=data, sat_blocks=args.sat_blocks)

    results = {"model": str(args.model), "sdsat": sdsat.to_dict(), "rows": int(heldout.shape[0]),
               "heldout": args.heldout_sources or "stdlib held-out split",
               "seq_len": args.seq_len, "blocks_per_seq": args.blocks_per_seq, "sat_blocks": args.sat_blocks,
               "max_answer_tokens": args.max_answer_tokens,
               "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
               "torch": torch.__version__}
    t0 = time.time()
    trained = load_model_dir(model_dir, dtype=torch.float32).eval()  # a gated model with its gate
    results["trained"] = evaluate(trained, heldout, sdsat, cfg)
    del trained
    if args.base:
        base, base_tok, *_ = load_base(args.base)
        fresh = add_sat_tokens(base, base_tok, sdsat.num_sat, len(sdsat.sat_id_set) > 1)
        if fresh.sat_token_ids != sdsat.sat_token_ids:
            raise SystemExit(f"base {args.base} gives SAT ids {fresh.sat_token_ids}, model has {sdsat.sat_token_ids}")
        results["untrained"] = evaluate(base.eval(), heldout, sdsat, cfg)
    results["seconds"] = round(time.time() - t0, 1)

    fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)
    print(f"held-out rows: {results['rows']} x {args.seq_len} tokens, {args.blocks_per_seq} SAT blocks each")
    for name in ("untrained", "trained"):
        if name in results:
            r = results[name]
            print(f"{name:10s} sat_loss {r['sat_loss']:.3f}  acc/offset {fmt(r['sat_acc'])}  agree/offset {fmt(r['sat_agree'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
