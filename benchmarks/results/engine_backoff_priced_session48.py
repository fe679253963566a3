"""Ad hoc (session 48): each run of engine_backoff_block2 priced at the block's own step times, so that what the
machine did between runs (up to 16% a run in the first block) drops out and what the policy sent stays: every
timed decode step of every run is pooled by (tokens, path), each step of a run is charged its pool's median,
and the run's priced time is the sum. Writes engine_backoff_priced_session48_cpu.json.
Usage: engine_backoff_priced_session48.py engine_backoff_runs_session48_cpu.json (the runs of both blocks; the
second block's carry their steps)"""
import json, statistics, sys
runs = [r for r in json.load(open(sys.argv[1])) if r["tag"].startswith("eb2_")]
pool = {}
for r in runs:
    for n, sec, spec in r["steps"]:
        pool.setdefault((n, spec), []).append(sec)
median = {k: statistics.median(v) for k, v in pool.items()}
rows = []
for r in runs:
    priced = sum(median[(n, spec)] for n, spec, in ((s[0], s[2]) for s in r["steps"]))
    measured = sum(s[1] for s in r["steps"])
    rows.append({"tag": r["tag"], "variant": r["variant"], "prompt_set": r["prompt_set"], "tok_per_s": r["tok_per_s"],
                 "timed_steps": len(r["steps"]), "tokens_in_timed_steps": sum(s[0] for s in r["steps"]),
                 "measured_s": round(measured, 3), "priced_s": round(priced, 3), "probes": r["probes"],
                 "probe_sat_rows": r["probe_sat_rows"], "tail_rows": r["tail_rows"], "draft_tokens": r["draft_tokens"]})
summary = {}
for pset in sorted({r["prompt_set"] for r in rows}):
    by = {v: [x for x in rows if x["prompt_set"] == pset and x["variant"] == v] for v in ("engine", "perrequest")}
    mean = {v: statistics.mean(x["priced_s"] for x in xs) for v, xs in by.items() if xs}
    if len(mean) == 2:
        summary[pset] = {"priced_s": mean, "engine_vs_perrequest": round(mean["perrequest"] / mean["engine"], 4)}
out = {"medians_ms": {f"{n} {'spec' if s else 'plain'}": [round(1e3 * m, 2), len(pool[(n, s)])]
                      for (n, s), m in sorted(median.items())}, "runs": rows, "summary": summary}
json.dump(out, open("benchmarks/results/engine_backoff_priced_session48_cpu.json", "w"), indent=1)
for x in rows:
    print(x)
print(json.dumps(summary))
print(json.dumps(out["medians_ms"]))
