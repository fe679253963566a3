"""Held-out SAT agreement per offset along a training run (from its log.jsonl), as a PNG.

    python benchmarks/plot_training.py RUN/log.jsonl --out benchmarks/results/training/curve.png \
        [--start-eval START.json] [--title "..."]

--start-eval: a JSON {"step": 0, "eval": {...}} (e.g. the warm-start adapter evaluated on the same
held-out set) drawn as the first point, so the curve shows what the run added.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_evals(log: Path) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if "eval" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", type=Path)
    p.add_argument("--out", required=True)
    p.add_argument("--start-eval", type=Path, default=None)
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = read_evals(args.log)
    if args.start_eval:
        evals = [json.loads(args.start_eval.read_text())] + evals
    if not evals:
        raise SystemExit(f"{args.log} has no held-out evaluations")
    steps = [e["step"] for e in evals]
    K = len(evals[0]["eval"]["sat_agree"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for j in range(K):
        ax.plot(steps, [e["eval"]["sat_agree"][j] for e in evals], marker="o", ms=3, label=f"SAT offset {j + 1}")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out agreement (SAT argmax = model's own token)")
    ax.set_ylim(0, max(0.6, max(e["eval"]["sat_agree"][0] for e in evals) + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(args.title or args.log.parent.name, fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
