"""Training throughput of the train modes on the same data: tokens/s of `gated` vs `lora` (and `full`, `frozen`).

    python benchmarks/bench_train_modes.py [--model smollm2-135m] [--modes lora gated] [--steps 10]
        [--warmup-steps 2] [--rounds 1] [--batch-size 4] [--seq-len 256] [--blocks-per-seq 24] [--num-sat 5]
        [--lora-r 16] [--lora-alpha 32] [--dtype fp32] [--threads 2] [--sources FILES] [--out results.json]

Each mode trains its own fresh copy of the base with the trainer's own pieces (make_trainable,
batch_for, sat_forward_loss, AdamW, gradient clipping), on the same batches: the batch of step i is a
function of the seed, the same in every mode. Warm-up steps are not timed. The timed steps run in
rounds, the modes in a rotating order within each round, so that drift on a shared machine hits every
mode alike; the per-mode figure is the total over rounds. Tokens are counted as the trainer counts
them (B x (L + M*K) per step: standard tokens + SATs), so tokens/s is comparable with log.jsonl's
`tokens_per_s`; SAT tokens/s (B x M*K per step) is printed beside it. `gated` and `frozen` run the
standard tokens without grad and back-propagate the SAT rows only; `lora` and `full` back-propagate
everything. Peak memory is not measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

MODES = ("full", "lora", "frozen", "gated")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a known name, an HF directory or a GGUF file")
    p.add_argument("--modes", nargs="+", default=["lora", "gated"], choices=MODES)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode and round")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per mode first")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--blocks-per-seq", type=int, default=24)
    p.add_argument("--num-sat", type=int, default=5)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="compute dtype (bf16: autocast)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sources", nargs="*", default=[], help="training text (default: the stdlib source)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from sdsat_vllm.adapters import resolve_model  # the shipped names too
    from sdsat_vllm.bench import cpu_name
    from sdsat_vllm.training.data import DataConfig, load_datasets
    from sdsat_vllm.training.sat_setup import add_sat_tokens
    from sdsat_vllm.training.trainer import TrainConfig, batch_for, load_base, make_trainable, sat_forward_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(resolve_model(args.model))
    data = DataConfig(sources=tuple(args.sources), seq_len=args.seq_len,
                      max_train_tokens=args.seq_len * args.batch_size * (args.warmup_steps + args.steps * args.rounds))
    runs = {}
    for mode in args.modes:
        cfg = TrainConfig(model=model_dir, output_dir="-", mode=mode, num_sat=args.num_sat,
                          blocks_per_seq=args.blocks_per_seq, batch_size=args.batch_size, dtype=args.dtype,
                          lora_r=args.lora_r, lora_alpha=args.lora_alpha, seed=args.seed, data=data)
        torch.manual_seed(args.seed)
        model, tok, *_ = load_base(model_dir)
        sdsat = add_sat_tokens(model, tok, cfg.num_sat, cfg.distinct_sats, mode)
        model, groups = make_trainable(model, sdsat, cfg)
        model.train()
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
        rows = runs[next(iter(runs))]["rows"] if runs else load_datasets(data, tok)[0]
        trainable = sum(p.numel() for g in groups for p in g["params"])
        runs[mode] = dict(cfg=cfg, sdsat=sdsat, model=model, opt=opt, rows=rows, step=0, seconds=0.0, tokens=0,
                          sat_tokens=0, steps=0, trainable=trainable)

    def step(run, timed: bool) -> None:
        cfg, model, opt = run["cfg"], run["model"], run["opt"]
        batch = batch_for(run["step"], 0, run["rows"], run["sdsat"], cfg)
        t0 = time.perf_counter()
        loss, _ = sat_forward_loss(model, batch, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        run["step"] += 1
        if timed:
            run["seconds"] += dt
            run["tokens"] += batch.input_ids.numel()
            run["sat_tokens"] += batch.input_ids[:, batch.num_standard:].numel()
            run["steps"] += 1

    hw = f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"model {args.model} | {hw} | {args.dtype} | batch {args.batch_size} x ({args.seq_len} + "
          f"{args.blocks_per_seq}x{args.num_sat} SATs) | {args.warmup_steps} warm-up + {args.rounds}x{args.steps} "
          f"timed steps per mode", flush=True)
    for mode in args.modes:
        for _ in range(args.warmup_steps):
            step(runs[mode], timed=False)
    modes = list(args.modes)
    for r in range(args.rounds):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:  # rotate: drift hits every mode alike
            for _ in range(args.steps):
                step(runs[mode], timed=True)
            print(f"  round {r + 1} {mode}: {runs[mode]['seconds'] / runs[mode]['steps']:.2f} s/step", flush=True)

    first = modes[0]
    print(f"\n{'mode':>7} {'trainable':>11} {'s/step':>8} {'tokens/s':>9} {'SAT tok/s':>10} {'vs ' + first:>9}")
    results = []
    for mode in modes:
        run = runs[mode]
        tps = run["tokens"] / run["seconds"]
        ratio = tps / (runs[first]["tokens"] / runs[first]["seconds"])
        print(f"{mode:>7} {run['trainable']:>11,} {run['seconds'] / run['steps']:>8.2f} {tps:>9.0f} "
              f"{run['sat_tokens'] / run['seconds']:>10.0f} {ratio:>8.2f}x")
        results.append({"mode": mode, "trainable_params": run["trainable"], "timed_steps": run["steps"],
                        "seconds": run["seconds"], "s_per_step": run["seconds"] / run["steps"], "tokens_per_s": tps,
                        "sat_tokens_per_s": run["sat_tokens"] / run["seconds"], f"ratio_vs_{first}": ratio})
    if args.out:
        doc = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
               "model": args.model, "hardware": hw, "machine": platform.machine(), "settings": vars(args),
               "torch": torch.__version__, "transformers": transformers.__version__, "modes": results}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
