"""Replay greedy completions through the adaptive drafting policy, offline: seconds per variant.

    python benchmarks/simulate_policy.py [MODEL] --prompt-set humaneval --skip 8 --num-prompts 32 \
        --cost 0.03 0.075 --out benchmarks/results/policy_sim_humaneval_cpu.json

An engine benchmark of one policy variant takes a quarter of an hour on this machine, and 8 prompts
leave a few percent of noise; choosing between variants needs more prompts and less time. This
collects, once, the model's greedy completion of each prompt (transformers, stopped at the set's
stop strings) and, at every position i of it, the SAT rows of ``prompt + completion[:i] + SATs``
(argmax, max probability, top 8): exactly what the proposer reads after a verify pass whose drafts
were all accepted (cached in ``--data``). Then it replays each completion step by step through the
policy's own state machine (``policy.AdaptiveDrafter``) and the proposer's lookup rule
(``proposer.lookup_chains``): drafts from fresh SAT rows only after a step whose drafts were all
accepted, the tail the policy chose, acceptance against the greedy continuation. Each forward costs
T(N) = 1 + r N for a request's N tokens (``--cost`` r; batch 1), plus c (``--step-overhead``) when it
carries a draft or a SAT (vLLM's speculative path; the policy is told c), so the figures are tokens per unit
time relative to plain decoding (speedup), and tokens per forward (tau). vLLM's suffix decoding
(arctic-inference's cache, its default settings; needs the package) is replayed on the same
completions. What it leaves out: the proposer's own time per step, the engine's scheduling, batches.
The engine benchmark (bench_vllm.py) measures the variant the simulation picks.

Default prompts skip the first 8 of each set, the ones bench_vllm.py measures, so that choices made
here are checked on prompts they were not made on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

#: where a step's SAT block sits (replay's `block`): "end", after the drafts (`fused`: its rows are fresh
#: only if every draft is accepted); "both", a second block after the step's first token x as well, read
#: when the first draft is rejected (the tree's B_0 alone; charged, the policy not told); "x", the one
#: block anchored at x instead, masked from the drafts (SAT j drafts the token j after x's), so that after
#: a draft accepted ones its rows a + 1.. are fresh: no SAT-only step ever, same tokens as "end", but vLLM's
#: causal attention cannot compute it (the tree mask)
BLOCKS = ("end", "both", "x")
#: variants: (label, lookup rule (None: off), probe back-off factor limit (None: the policy's default), block,
#: whether a doubtful chain may go without its tail (AdaptiveDrafter.DROP_TAIL; False: the tail always sent))
VARIANTS = (
    ("adaptive", None, None, "end", True),
    ("adaptive, no probe back-off", None, 1, "end", True),
    ("adaptive + lookup", "chains", None, "end", True),
    ("adaptive + lookup, no probe back-off", "chains", 1, "end", True),
    ("adaptive + lookup (v1 rule), no probe back-off", "v1", 1, "end", True),
    ("adaptive + lookup + datastore", "datastore", None, "end", True),  # with --datastore only
    ("adaptive + lookup + datastore, tail always sent", "datastore", None, "end", False),  # before session 39
    ("adaptive + lookup, a block after x", "chains", None, "both", True),
    ("adaptive + lookup + datastore, a block after x", "datastore", None, "both", True),  # with --datastore only
    ("adaptive + lookup + datastore, the block at x", "datastore", None, "x", True),  # with --datastore only
)
V1_PRIOR_Q = 0.55  # the v1 rule's q for a lookup token no fresh SAT row scores
TOP = 8  # SAT row probabilities kept per row (a lookup token outside them scores 0)


def collect(model_dir: Path, prompt_set: str, skip: int, num: int, max_tokens: int) -> list[dict]:
    """[{prompt, output, rows}] for prompts skip..skip+num of the set; rows[i]: the SAT rows after
    prompt + output[:i] (argmax, q, top ids, top probabilities), SAT ids excluded."""
    import torch
    from transformers import AutoTokenizer
    from tqdm import tqdm

    from sdsat_vllm.bench import chat_formatter, prompt_set as load_prompts
    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.training.gated import load_model_dir

    sat = list(SDSATConfig.from_pretrained(model_dir).sat_token_ids)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_model_dir(model_dir, dtype=torch.float32).eval()  # a gated model with its gate
    chat = chat_formatter(model_dir) if prompt_set == "norepeat" else None
    prompts, stops = load_prompts(prompt_set, skip + num, chat=chat)
    out = []
    with torch.no_grad():
        for text in tqdm(prompts[skip:], desc=f"{prompt_set}: completions and SAT rows"):
            ids = tok(text, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)[0, ids.shape[1]:].tolist()
            for n in range(1, len(gen) + 1):  # cut where vLLM's stop strings would
                if any(s in tok.decode(gen[:n]) for s in stops or ()):
                    gen = gen[:n]
                    break
            prompt, rows = ids[0].tolist(), []
            lp = sat_logprobs_at_every_position(model, prompt, gen, sat)
            lp[..., sorted(set(sat))] = float("-inf")
            for top in (torch.topk(row, TOP, -1) for row in lp):
                rows.append({"argmax": top.indices[:, 0].tolist(), "q": top.values[:, 0].exp().tolist(),
                             "top": top.indices.tolist(), "top_p": top.values.exp().tolist()})
            out.append({"prompt": prompt, "output": gen, "rows": rows})
    return out


def sat_logprobs_at_every_position(model, prompt: list[int], output: list[int], sat: list[int]):
    """[len(output), K, vocab] log-probabilities of the SAT block after ``prompt + output[:i]``, for
    every i, in one forward: the completion as a chain of nodes with a SAT block anchored at the
    prompt's last token and at each node (decoding/tree.py's layout and mask), instead of one
    forward per position (a ~15x smaller bill: every block reads the same context once)."""
    import torch

    from sdsat_vllm.decoding.tree import ROOT, build_tree_attention_mask, make_layout, tree_step_tensors

    nodes = output[:-1]  # the block after the whole output is never read
    layout = make_layout(prompt, nodes, [ROOT] + list(range(len(nodes) - 1)) if nodes else [],
                         [ROOT] + list(range(len(nodes))), sat)
    steps = tree_step_tensors(layout)
    # [1, 1, q_len, q_len]
    mask = build_tree_attention_mask(steps, 0, model.dtype)
    logits = model(input_ids=torch.tensor([layout.input_ids]), position_ids=steps.position_ids(0)[None],
                   attention_mask=mask).logits[0].float()
    first = len(prompt) + len(nodes)  # the first block's first SAT
    # [len(output), K, vocab]
    return torch.log_softmax(logits[first:].reshape(len(output), len(sat), -1), -1)


def model_vocab(model_dir: Path) -> int:
    """The model's vocabulary size (the width of the replay's SAT rows): not the largest id the cached rows
    hold, since a datastore chain may carry any token."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])


def sat_agreement(data: list[dict], num_sat: int, bucket: int = 16) -> dict:
    """Teacher-forced agreement of the SAT argmax with the completion: ``offsets[k-1]`` is the share of
    positions i where SAT k of the block after output[:i] is output[i+k] (the standard position before
    the block predicts output[i]; SAT k the token k after it); ``offset1_by_position`` the
    same at offset 1 per ``bucket`` tokens of the answer (its opening is what serving drafts with the
    least context; results 32.2)."""
    hits, seen = [0] * num_sat, [0] * num_sat
    by_pos: dict[int, list[int]] = {}
    for item in data:
        out = item["output"]
        for i, row in enumerate(item["rows"]):
            for k in range(min(num_sat, len(out) - i - 1)):
                ok = row["argmax"][k] == out[i + k + 1]
                hits[k] += ok
                seen[k] += 1
                if k == 0:
                    by_pos.setdefault(i // bucket, [0, 0])[0] += ok
                    by_pos[i // bucket][1] += 1
    return {"offsets": [h / s if s else None for h, s in zip(hits, seen)], "positions": seen,
            "offset1_by_position": {f"{b * bucket + 1}-{(b + 1) * bucket}": h / s
                                    for b, (h, s) in sorted(by_pos.items())}}


def _logprobs(row: dict, count: int, vocab: int):
    import torch

    lp = torch.full((count, vocab), float("-inf"))
    for j in range(count):
        lp[j, torch.tensor(row["top"][j])] = torch.tensor(row["top_p"][j]).log()
    return lp


def v1_chain(text: list[int], fresh: int, row: dict, n: int, sat_ids: frozenset[int]) -> list:
    """The lookup rule before lookup_chains (session 7, results 9.5): the continuation of a suffix
    match of 2+ tokens only, each token scored by its fresh SAT row's probability (0 outside the top
    kept here), else a flat V1_PRIOR_Q."""
    from sdsat_vllm.vllm_plugin.lookup import suffix_match
    from sdsat_vllm.vllm_plugin.proposer import LookupOption

    m = suffix_match(text, n, min_ngram=2, stop=sat_ids)
    if m is None:
        return []
    cand = m.tokens
    q = [V1_PRIOR_Q] * len(cand)
    for j in range(min(fresh, len(cand))):
        q[j] = row["top_p"][j][row["top"][j].index(cand[j])] if cand[j] in row["top"][j] else 0.0
    return [LookupOption(cand, q, m.ngram, "text")]


def replay(data: list[dict], r: float, lookup: str | None, backoff: int | None, n: int, sat_ids: frozenset[int],
           vocab: int, overhead: float = 0.0, datastore=None, block: str = "end", drop_tail: bool = True) -> dict:
    """One variant over every completion at batch 1; a fresh drafter per variant, shared by the
    completions (its calibration learns across requests, as in the engine). lookup "datastore": the
    lookup chains with `datastore`'s too (sdsat_vllm/datastore.py). block (BLOCKS): where the step's
    SAT block sits. rows[j] is the block after out[:j] (its SAT k drafts out[j + k]): the tail after a
    step's drafts, all accepted, is rows[i + a]; a block at x (the step's first token, out[i - 1]) is
    rows[i], whose SATs a + 1.. draft what follows a accepted drafts and the recovered token."""
    from sdsat_vllm.vllm_plugin.cost_model import CostModel
    from sdsat_vllm.vllm_plugin.policy import AdaptiveDrafter
    from sdsat_vllm.vllm_plugin.proposer import lookup_chains

    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    drafter = AdaptiveDrafter(n, n, CostModel.linear(r, step_overhead=overhead), online=False)
    if backoff is not None:
        drafter.PROBE_BACKOFF_MAX = backoff
    drafter.DROP_TAIL = drop_tail
    tokens = time_units = steps = lookup_steps = drafts_sent = 0
    for k, item in enumerate(data):
        prompt, out, rows = item["prompt"], item["output"], item["rows"]
        # the first token comes from the prefill; the first decode step has no fresh SAT rows.
        # fresh: how many fresh SAT rows the step has, rows[i - 1 - skip]'s from its SAT skip + 1 on
        i, fresh, skip, verified, accepted = 1, 0, 0, None, 0
        while i < len(out):
            drafter.tick()
            held = rows[i - 1 - skip]
            row = {key: held[key][skip:skip + fresh] for key in ("argmax", "q", "top", "top_p")} if skip else held
            fresh_q = row["q"][:fresh]
            cand, lookup_q, source = [], None, "text"
            if lookup:
                options = v1_chain(prompt + out[:i], fresh, row, n, sat_ids) if lookup == "v1" else \
                    lookup_chains(prompt + out[:i], row["argmax"][:fresh], fresh_q,
                                  _logprobs(row, fresh, vocab) if fresh else None, 0, n, sat_ids,
                                  datastore if lookup == "datastore" else None)
                best = drafter.pick_lookup([o.q for o in options], [o.source for o in options])
                if best is not None:
                    cand, lookup_q, source = options[best].tokens, options[best].q, options[best].source
            d = drafter.decide(f"r{k}", fresh_q, verified_real=verified, accepted=accepted, batch_size=1,
                               lookup_q=lookup_q, lookup_source=source)
            chain = (cand if d.lookup else row["argmax"][:fresh])[:d.drafts]
            a = 0
            while a < len(chain) and i + a < len(out) and out[i + a] == chain[a]:
                a += 1
            tokens += min(a + 1, len(out) - i)
            second_block = d.tail if block == "both" and d.drafts else 0
            time_units += 1 + r * (1 + d.drafts + d.tail + second_block) + (overhead if d.drafts + d.tail else 0.0)
            steps += 1
            lookup_steps += d.lookup
            drafts_sent += d.drafts
            if block == "x" and d.drafts and d.tail:
                fresh, skip = d.tail - a, a  # rows[i] from its SAT a + 1 on (none left if a >= tail)
            elif a == d.drafts and d.tail:
                fresh, skip = d.tail, 0  # the tail after the drafts (at x itself when there were none)
            elif block == "both" and a == 0 and second_block:
                fresh, skip = d.tail, 0  # the block after x: rows[i] whole
            else:
                fresh, skip = 0, 0
            if fresh <= 0:
                fresh, skip = 0, 0
            i += a + 1
            verified, accepted = d.drafts, a
        drafter.keep_only([])
    return {"speedup": tokens * (1 + r) / time_units, "tau": tokens / steps, "forwards": steps,
            "drafts_per_forward": drafts_sent / steps, "lookup_forwards": lookup_steps}


def replay_suffix(data: list[dict], r: float, n: int, overhead: float = 0.0) -> dict | None:
    """vLLM's suffix decoding on the same completions (its proposer's calls, vLLM's defaults)."""
    try:
        from arctic_inference.suffix_decoding import SuffixDecodingCache
    except ImportError:
        return None
    cache = SuffixDecodingCache(max_tree_depth=24, max_cached_requests=0)
    tokens = time_units = steps = 0
    for k, item in enumerate(data):
        prompt, out = item["prompt"], item["output"]
        cache.start_request(f"r{k}", prompt)
        cache.add_active_response(f"r{k}", out[:1])
        i = 1
        while i < len(out):
            text = prompt + out[:i]
            draft = cache.speculate(f"r{k}", text[-24:], max_spec_tokens=n, max_spec_factor=1.0,
                                    min_token_prob=0.1).token_ids
            a = 0
            while a < len(draft) and i + a < len(out) and out[i + a] == draft[a]:
                a += 1
            c = min(a + 1, len(out) - i)
            cache.add_active_response(f"r{k}", out[i:i + c])
            tokens += c
            time_units += 1 + r * (1 + len(draft)) + (overhead if draft else 0.0)
            steps += 1
            i += c
        cache.stop_request(f"r{k}")
    return {"speedup": tokens * (1 + r) / time_units, "tau": tokens / steps, "forwards": steps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--prompt-set", default="humaneval", choices=["humaneval", "norepeat"])
    p.add_argument("--skip", type=int, default=8, help="prompts of the set to skip (bench_vllm.py measures the first 8)")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("-n", "--num-speculative-tokens", type=int, default=None, help="default: the model's K")
    p.add_argument("--cost", type=float, nargs="+", default=[0.03, 0.075],
                   help="extra time of one more token in a forward, relative to its fixed part (T(N) = 1 + rN)")
    p.add_argument("--step-overhead", type=float, default=0.0,
                   help="extra time of a forward on vLLM's speculative path (any draft or SAT), relative to the "
                        "fixed part (default 0: greedy requests on this CPU; ~0.05-0.15 for seeded sampled ones)")
    p.add_argument("--datastore", default=None,
                   help="a datastore file (`sdsat datastore`): adds the variant whose lookups search it too")
    p.add_argument("--data", default=None, help="cache of the completions and SAT rows (JSON; made when missing)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from sdsat_vllm.bench import cpu_name, git_state, repeated_share
    from sdsat_vllm.config import SDSATConfig

    model_dir = resolve_model(args.model or DEFAULT_SDSAT_MODEL)
    sdsat = SDSATConfig.from_pretrained(model_dir)
    n = args.num_speculative_tokens or sdsat.num_sat
    key = {"model": str(model_dir), "prompt_set": args.prompt_set, "skip": args.skip,
           "num_prompts": args.num_prompts, "max_tokens": args.max_tokens}
    cache = Path(args.data) if args.data else None
    data = None
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") != key:
            sys.exit(f"{cache} holds completions for {saved.get('key')}, not {key}: give another --data path")
        data = saved["data"]
    if data is None:
        data = collect(model_dir, args.prompt_set, args.skip, args.num_prompts, args.max_tokens)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "data": data}))
    vocab = model_vocab(model_dir)
    store = None
    if args.datastore:
        from sdsat_vllm.datastore import load_datastore

        store = load_datastore(args.datastore)
        key["datastore"] = args.datastore
    results = []
    for r in args.cost:
        base = replay_suffix(data, r, n, args.step_overhead)
        if base is not None:
            results.append({"cost": r, "step_overhead": args.step_overhead, "method": "suffix (vLLM, replayed)", **base})
        for label, lookup, backoff, block, drop_tail in VARIANTS:
            if lookup == "datastore" and store is None:
                continue
            results.append({"cost": r, "step_overhead": args.step_overhead, "method": label,
                            **replay(data, r, lookup, backoff, n, sdsat.sat_id_set, vocab, args.step_overhead,
                                     store, block, drop_tail)})
    tokens = sum(len(item["output"]) for item in data)
    agreement = sat_agreement(data, sdsat.num_sat)
    # how often the completions repeat themselves: what lookups (and suffix decoding) live on
    agreement["repeated_8gram_share"] = repeated_share([item["output"] for item in data])
    print(f"{args.prompt_set}: {len(data)} completions, {tokens} tokens, n = {n}, "
          f"{agreement['repeated_8gram_share']:.1%} of them end an 8-gram seen earlier in their completion")
    by_position = " ".join(f"{k} {a:.2f}" for k, a in agreement["offset1_by_position"].items())
    print("SAT agreement by offset: " + " ".join(f"{a:.3f}" for a in agreement["offsets"] if a is not None)
          + f"; offset 1 by position: {by_position}")
    print(f"{'r':>6}  {'method':48} {'speedup':>8} {'tau':>6} {'forwards':>9}")
    for row in results:
        print(f"{row['cost']:6.3f}  {row['method']:48} {row['speedup']:8.3f} {row['tau']:6.3f} {row['forwards']:9d}")
    if args.out:
        meta = {"command": " ".join(sys.argv), **key, "n": n, "output_tokens": tokens, "machine": cpu_name(),
                "git": git_state(Path(__file__).resolve().parent), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps({"meta": meta, "sat_agreement": agreement, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
