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

With `--decode`, every row is also exported (its command re-run without `--no-export`: it resumes at
its last step and writes model/) and decoded through vLLM: the SDSAT plugin under the fixed policy
(n = the row's K drafts and a K-SAT tail every step, so every real draft is K long), batch 1,
greedy, fp32, on the first `--decode-prompts` HumanEval prompts (bench_vllm.py's set), no stop
strings (as the demo and `bench_vllm.py --no-stop`), at most `--decode-max-tokens` each. Columns
added: mean acceptance length (tau: tokens per decode forward) and the acceptance rate per position
of real drafts (sdsat_vllm/metrics_vocabulary.py).
Decoding needs no quiet machine (tau and acceptance do not depend on load), so it runs beside the
training rows, one engine at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
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
    # LoRA deltas on SAT rows only: the served model stays the base model bit for bit (issue 9)
    "cold-gated": ("cold", ["--sources", "{data}", "--mode", "gated"]),
}


def _flag(flags: list[str], name: str) -> int:
    return int(flags[len(flags) - 1 - flags[::-1].index(name) + 1])  # the last occurrence wins, as in argparse


def train_command(name: str, args) -> list[str]:
    """The row's `sdsat train` command: the shared flags, its own, and the steps its token budget buys."""
    _, flags = ROWS[name]
    all_flags = [*SHARED, *[f.format(data=args.data) for f in flags]]
    per_step = _flag(all_flags, "--batch-size") * (_flag(all_flags, "--seq-len")
                                                   + _flag(all_flags, "--blocks-per-seq") * _flag(all_flags, "--num-sat"))
    steps = _flag(all_flags, "--steps") if "--steps" in all_flags else max(1, round(args.tokens / per_step))
    return [sys.executable, "-m", "sdsat_vllm.cli", "train", "--output-dir", str(Path(args.work_dir) / name),
            *all_flags, "--heldout-sources", args.heldout, "--steps", str(steps)]


def run_row(name: str, args) -> dict:
    group, flags = ROWS[name]
    out = Path(args.work_dir) / name
    cmd = train_command(name, args)
    steps = int(cmd[-1])
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


def decode_row(name: str, args, lock) -> dict:
    """Export the row (once) and decode the HumanEval prompts with it through vLLM (one engine at a
    time: `lock`); the figures land in WORK/NAME/decode.json, reused when there."""
    out = Path(args.work_dir) / name
    result = out / "decode.json"
    if not result.is_file():
        with lock:
            if not (out / "model" / "config.json").is_file():
                cmd = [c for c in train_command(name, args) if c != "--no-export"]
                with open(Path(args.work_dir) / f"{name}.log", "a") as log:
                    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            with open(Path(args.work_dir) / f"{name}.decode.log", "a") as log:
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--decode-one", str(out / "model"),
                                "--decode-prompts", str(args.decode_prompts),
                                "--decode-max-tokens", str(args.decode_max_tokens), "--out", str(result)],
                               check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return json.loads(result.read_text())


def decode_one(model_dir: str, num_prompts: int, max_tokens: int) -> dict:
    """One vLLM engine on `model_dir`, the SDSAT plugin's fixed policy at n = K, batch 1, greedy."""
    from sdsat_vllm.bench import engine_kwargs, prompt_set, quiet_vllm, run_vllm

    quiet_vllm()
    from vllm import SamplingParams

    from sdsat_vllm.config import SDSATConfig

    k = SDSATConfig.from_pretrained(model_dir).num_sat
    # no stop strings (as `bench_vllm.py --no-stop` and the demo): a model that restarts with "\ndef "
    # would otherwise stop after one token under HumanEval's stops and leave nothing to measure
    prompts, _ = prompt_set("humaneval", num_prompts)
    spec = {"model": "sdsat", "num_speculative_tokens": k, "sdsat_policy": "fixed"}
    run = run_vllm(model_dir, spec, prompts, SamplingParams(temperature=0, max_tokens=max_tokens),
                   engine_kw=engine_kwargs(max_model_len=1024)).runs[0]
    d = run.spec
    return {"model": model_dir, "speculative_config": spec, "prompt_set": "humaneval", "num_prompts": len(prompts),
            "stop": None,
            "max_tokens": max_tokens, "output_tokens": run.tokens,
            "mean_acceptance_length": d.mean_acceptance_length,
            "real_draft_acceptance_rate_per_pos": d.real_draft_acceptance_rate_per_pos,
            "acceptance_rate_per_pos": d.acceptance_rate_per_pos, "num_drafts": d.num_drafts,
            "num_accepted_tokens_per_pos": list(d.num_accepted_tokens_per_pos)}


def markdown(results: list[dict], args) -> str:
    def per(xs):
        return " ".join(f"{x:.3f}" for x in xs)

    decode = any("decode" in r for r in results)
    lines = [f"{args.tokens} training tokens per row, {args.parallel} rows at a time (1 thread each); "
             f"held-out: {args.heldout}"
             + (f"; decoded: vLLM, fixed policy n=K, batch 1, greedy, {args.decode_prompts} HumanEval prompts "
                f"x <= {args.decode_max_tokens} tokens" if decode else ""), "",
             "| row | group | steps | train tok/s | SAT targets/s | held-out agreement per offset | accuracy per offset |"
             + (" tau | real-draft acceptance per position |" if decode else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if decode else "")]
    for r in results:
        line = (f"| {r['row']} | {r['group']} | {r['steps']} | {r['tokens_per_s']:.0f} | "
                f"{r['sat_targets_per_s']:.0f} | {per(r['heldout_agree'])} | {per(r['heldout_acc'])} |")
        if "decode" in r:
            d = r["decode"]
            line += f" {d['mean_acceptance_length']:.2f} | {per(d['real_draft_acceptance_rate_per_pos'])} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="self-distilled training JSONL (sdsat make-data)")
    p.add_argument("--heldout", help="held-out JSONL every row is evaluated on")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--tokens", type=int, default=40000, help="training tokens per row (SATs included)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--work-dir", default="runs/ablation")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    p.add_argument("--decode", action="store_true", help="also export every row and decode through vLLM")
    p.add_argument("--decode-prompts", type=int, default=16)
    p.add_argument("--decode-max-tokens", type=int, default=128)
    p.add_argument("--decode-one", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # the child process of --decode
    args = p.parse_args(argv)
    if args.decode_one:
        figures = decode_one(args.decode_one, args.decode_prompts, args.decode_max_tokens)
        Path(args.out).write_text(json.dumps(figures, indent=2))
        return 0
    if not (args.data and args.heldout):
        p.error("--data and --heldout are required")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    trainers, engine_lock = threading.Semaphore(args.parallel), threading.Lock()

    def row(name: str) -> dict:
        with trainers:  # `--parallel` rows train at a time; a finished row decodes while the next ones train
            r = run_row(name, args)
        if args.decode:
            r["decode"] = decode_row(name, args, engine_lock)
        return r

    with ThreadPoolExecutor(len(args.rows)) as pool:
        results = list(pool.map(row, args.rows))
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
