"""Which SAT-training choices buy the most per unit of compute: one row per choice, the same
budget of training tokens per row, evaluated on the same held-out set (the model's own completions).

    python benchmarks/ablate_sat_training.py --data D/sd.jsonl --heldout D/sd.heldout.jsonl \
        --tokens 40000 --parallel 2 --rows sd stdlib soft --out benchmarks/results/training_ablation

Each row is `sdsat train` with the shared flags below plus its own, and as many steps as its
layout fits in the token budget (a step processes batch x (seq_len + blocks x K) tokens, SATs
included: compute is about proportional to tokens), with its whole warm-up + cosine schedule. A
token budget, not a wall-clock one, because on a shared 2-core machine the minutes a row gets
depend on what else runs; tokens/s is reported beside it (noisy for that reason; a soft-target
row's extra full-vocabulary softmax shows there). Rows run `--parallel` at a time with one thread
each. Columns: steps, training tokens/s (SAT tokens included), SAT targets/s, and held-out
agreement per SAT offset (SAT argmax == the model's own
argmax at the position that predicts the same token: the teacher-forced proxy of greedy draft
acceptance) and accuracy (SAT argmax == the data's token). `warm` rows start from the shipped
adapter (K=5, one SAT id, LoRA r=8), the others from scratch; compare rows only within a group.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the adapter shipped before self-distillation (smollm2-135m-sdsat-stdlib): the warm rows start from it
STDLIB_ADAPTER = REPO / "sdsat_vllm" / "adapters" / "smollm2-135m-lora-k5"

# The shipped adapter's recipe: every row differs from it in what its name says.
SHARED = ["--model", "smollm2-135m", "--mode", "lora", "--lora-r", "8", "--lora-alpha", "16", "--num-sat", "5",
          "--blocks-per-seq", "24", "--batch-size", "4", "--lr", "5e-4", "--sat-lr", "2e-3", "--warmup-steps", "10",
          "--dtype", "fp32", "--threads", "1", "--eval-every", "100000", "--eval-batches", "16",
          "--save-every", "100000", "--log-every", "5", "--no-export", "--seq-len", "256"]
WARM = ["--init-adapter", str(STDLIB_ADAPTER)]

# name -> (group, flags). "{data}" is the self-distilled training file.
ROWS: dict[str, tuple[str, list[str]]] = {
    # the starting point of the warm rows, evaluated as it is (one step at learning rate 0)
    "shipped": ("warm", WARM + ["--sources", "{data}", "--lr", "0", "--sat-lr", "0", "--steps", "1"]),
    "sd": ("warm", WARM + ["--sources", "{data}"]),
    "stdlib": ("warm", WARM),
    "soft": ("warm", WARM + ["--sources", "{data}", "--target", "soft"]),
    "offset-decay": ("warm", WARM + ["--sources", "{data}", "--offset-weights", "1", ".8", ".64", ".51", ".41"]),
    "blocks64": ("warm", WARM + ["--sources", "{data}", "--blocks-per-seq", "64"]),
    "cold-sd": ("cold", ["--sources", "{data}"]),
    "cold-k3": ("cold", ["--sources", "{data}", "--num-sat", "3"]),
    "cold-distinct": ("cold", ["--sources", "{data}", "--distinct-sats"]),
    "cold-r16": ("cold", ["--sources", "{data}", "--lora-r", "16", "--lora-alpha", "32"]),
}


def _flag(flags: list[str], name: str) -> int:
    return int(flags[len(flags) - 1 - flags[::-1].index(name) + 1])  # the last occurrence wins, as in argparse


def run_row(name: str, args) -> dict:
    group, flags = ROWS[name]
    out = Path(args.work_dir) / name
    all_flags = [*SHARED, *[f.format(data=args.data) for f in flags]]
    per_step = _flag(all_flags, "--batch-size") * (_flag(all_flags, "--seq-len")
                                                   + _flag(all_flags, "--blocks-per-seq") * _flag(all_flags, "--num-sat"))
    steps = _flag(all_flags, "--steps") if "--steps" in all_flags else max(1, round(args.tokens / per_step))
    cmd = [sys.executable, "-m", "sdsat_vllm.cli", "train", "--output-dir", str(out), *all_flags,
           "--heldout-sources", args.heldout, "--steps", str(steps)]
    t0 = time.time()
    log_path = out / "log.jsonl"
    finished = log_path.is_file() and any(json.loads(line).get("step") == steps and "eval" in line
                                          for line in log_path.read_text().splitlines())
    if not finished:  # a row finished by an earlier invocation is reused: the table can be resumed
        with open(Path(args.work_dir) / f"{name}.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    last_eval = [r for r in records if "eval" in r][-1]
    speed = [r for r in records if "tokens_per_s" in r][-1]
    cfg = json.loads((out / "train_config.json").read_text())
    L, M, K = cfg["data"]["seq_len"], cfg["blocks_per_seq"], cfg["num_sat"]
    return {"row": name, "group": group, "flags": flags, "command": " ".join(cmd),
            "wall_s": None if finished else time.time() - t0,
            "steps": last_eval["step"], "tokens_per_s": speed["tokens_per_s"],
            "sat_targets_per_s": speed["tokens_per_s"] * M * K / (L + M * K),
            "heldout_agree": last_eval["eval"]["sat_agree"], "heldout_acc": last_eval["eval"]["sat_acc"],
            "heldout_sat_loss": last_eval["eval"]["sat_loss"]}


def markdown(results: list[dict], args) -> str:
    def per(xs):
        return " ".join(f"{x:.3f}" for x in xs)

    lines = [f"{args.tokens} training tokens per row, {args.parallel} rows at a time (1 thread each); "
             f"held-out: {args.heldout}", "",
             "| row | group | steps | train tok/s | SAT targets/s | held-out agreement per offset | accuracy per offset |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['group']} | {r['steps']} | {r['tokens_per_s']:.0f} | "
                     f"{r['sat_targets_per_s']:.0f} | {per(r['heldout_agree'])} | {per(r['heldout_acc'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="self-distilled training JSONL (sdsat make-data)")
    p.add_argument("--heldout", required=True, help="held-out JSONL every row is evaluated on")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--tokens", type=int, default=40000, help="training tokens per row (SATs included)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--work-dir", default="runs/ablation")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda name: run_row(name, args), args.rows))
    table = markdown(results, args)
    print(table)
    if args.out:
        meta = {"commit": commit.strip(), "machine": platform.processor() or platform.machine(),
                "command": " ".join(sys.argv), "shared_flags": SHARED, "tokens": args.tokens,
                "parallel": args.parallel}
        Path(args.out + ".json").write_text(json.dumps({**meta, "rows": results}, indent=2))
        Path(args.out + ".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
