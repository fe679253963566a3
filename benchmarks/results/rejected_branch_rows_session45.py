"""What a step whose SAT draft was rejected still knows about the tokens after the recovered one (results 45.1).

    python benchmarks/results/rejected_branch_rows_session45.py DATA [--threads 2] [--out JSON]

DATA: `benchmarks/simulate_policy.py`'s cache (``--data``: a model's greedy completions and, at every position i, the
SAT rows after ``prompt + output[:i]``). In `fused` mode a step ``[x, d, S_1..S_K]`` whose draft d for position i is
rejected commits y = output[i], and the next step is SAT-only or drafts from a lookup: 70% of the steps on norepeat
(results 37.1). Two sources of drafts for that next step exist without another forward, and this measures both
against the greedy completion, teacher-forced, at every position where the SAT draft d is wrong:

- the rejected branch's rows ("branch"): d's own verify row (the model's next token after the wrong d, position i + 1)
  and the SAT block after d (SAT k: position i + 1 + k), as vLLM computed them in that step. Scored by one
  transformers forward per completion (decoding/tree.py's layout: the completion as a chain, each wrong d a sibling
  of output[i] with its SAT block). Control: the same with d replaced by output[i] must give 1.0 at the first slot.
- the block that drafted d, read further ("skip"): its SATs 2..K predicted positions i + 1.. from the prefix before
  x, never conditioned on d, so a rejected d does not make them stale (no forward: DATA holds them).

Printed (and written to --out): per slot, how often the chain's token is the completion's; the mean accepted length
of each chain (leading matches).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def leading_matches(chain: list[int], target: list[int]) -> int:
    n = 0
    while n < min(len(chain), len(target)) and chain[n] == target[n]:
        n += 1
    return n


def branch_chains(model, prompt: list[int], out: list[int], wrong: list[tuple[int, int]], sat: list[int]) -> list[list[int]]:
    """For each (i, d) in `wrong`: [argmax of d's row, argmax of SAT 1..K after d], d standing at output[i]'s place."""
    import torch

    from sdsat_vllm.decoding.tree import ROOT, build_tree_attention_mask, make_layout, tree_step_tensors

    chain = out[:-1]
    nodes = list(chain) + [d for _, d in wrong]
    parents = [ROOT] + list(range(len(chain) - 1)) + [i - 1 for i, _ in wrong]
    layout = make_layout(prompt, nodes, parents, [len(chain) + j for j in range(len(wrong))], sat)
    steps = tree_step_tensors(layout)
    mask = build_tree_attention_mask(steps, 0, model.dtype)
    with torch.no_grad():
        # [q_len, vocab]
        logits = model(input_ids=torch.tensor([layout.input_ids]), position_ids=steps.position_ids(0)[None],
                       attention_mask=mask).logits[0].float()
    logits[:, sorted(set(sat))] = float("-inf")
    top = logits.argmax(-1).tolist()
    first_node, first_sat, k = len(prompt) + len(chain), len(prompt) + len(nodes), len(sat)
    return [[top[first_node + j]] + top[first_sat + j * k: first_sat + (j + 1) * k] for j in range(len(wrong))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.training.gated import load_model_dir

    saved = json.loads(Path(args.data).read_text())
    model_dir = saved["key"]["model"]
    torch.set_num_threads(args.threads)
    sat = list(SDSATConfig.from_pretrained(model_dir).sat_token_ids)
    k = len(sat)
    model = load_model_dir(model_dir, dtype=torch.float32).eval()
    tallies = {name: {"hits": [0] * (k + 1), "seen": [0] * (k + 1), "accepted": []}
               for name in ("branch", "branch control (d = the right token)", "skip")}

    def tally(name: str, chain: list[int], target: list[int]) -> None:
        t = tallies[name]
        for s in range(min(len(chain), len(target))):
            t["seen"][s] += 1
            t["hits"][s] += chain[s] == target[s]
        t["accepted"].append(leading_matches(chain, target))

    positions = 0
    for item in saved["data"]:
        prompt, out, rows = item["prompt"], item["output"], item["rows"]
        wrong = []
        for i in range(1, len(out) - 1):
            positions += 1
            d = rows[i - 1]["argmax"][0]  # SAT 1 of the block after output[:i-1]: the draft for output[i]
            if d != out[i]:
                wrong.append((i, d))
                tally("skip", rows[i - 1]["argmax"][1:], out[i + 1:i + k])
        if not wrong:
            continue
        for (i, _), chain in zip(wrong, branch_chains(model, prompt, out, wrong, sat)):
            tally("branch", chain, out[i + 1:i + 2 + k])
        right = [(i, out[i]) for i, _ in wrong]
        for (i, _), chain in zip(right, branch_chains(model, prompt, out, right, sat)):
            tally("branch control (d = the right token)", chain, out[i + 1:i + 2 + k])
    result = {"data": args.data, "key": saved["key"], "positions": positions,
              "wrong_sat_drafts": len(tallies["skip"]["accepted"]), "chains": {}}
    for name, t in tallies.items():
        result["chains"][name] = {
            "agreement_by_slot": [round(h / s, 4) if s else None for h, s in zip(t["hits"], t["seen"])],
            "mean_accepted": round(sum(t["accepted"]) / max(1, len(t["accepted"])), 4),
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
