"""Ad hoc (session 47): the drafter's fitted cost model (b/a, c/a) at every step of one in-process engine, and the
draft tokens each step carried. Norepeat, batch 1, the default policy with lookup."""
import json, os, sys, time
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from sdsat_vllm.bench import chat_formatter, engine_kwargs, observe_proposer, prompt_set, quiet_vllm, run_vllm
quiet_vllm()
from vllm import SamplingParams
from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
model_dir = resolve_model(DEFAULT_SDSAT_MODEL)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
cost_opt = sys.argv[2] if len(sys.argv) > 2 else "online"
prompts, stop = prompt_set("norepeat", 32, 0, chat_formatter(model_dir))
prompts = prompts[:n]
sampling = SamplingParams(temperature=0.0, max_tokens=64, stop=stop)
spec = {"model": "sdsat", "num_speculative_tokens": 5, "sdsat_cost": cost_opt if cost_opt in ("online", "default") else float(cost_opt)}
rows, seen = [], {}
def obs(proposer, a, call):
    now, sched = time.perf_counter(), a["scheduler_output"]
    cost = proposer.drafter.cost()
    at = cost.time(0)
    sat = set(proposer.sat_ids)
    drafts = sum(sum(1 for t in v if t not in sat) for v in (sched.scheduled_spec_decode_tokens or {}).values()) if sched else 0
    spec_tok = sum(len(v) for v in (sched.scheduled_spec_decode_tokens or {}).values()) if sched else 0
    rows.append({"t": now, "N": int(sched.total_num_scheduled_tokens) if sched else None, "spec_tokens": spec_tok, "drafts": drafts,
                 "b_over_a": cost.marginal(1) / at, "c_over_a": cost.step_overhead / at, "a_ms": 1e3 * at})
    return call()
with observe_proposer(obs):
    run = run_vllm(model_dir, spec, prompts, sampling, batch_sizes=[1],
                   engine_kw={**engine_kwargs(max_model_len=2048), "max_num_seqs": 4})
r = run.runs[0]
import statistics as st
tag = sys.argv[3] if len(sys.argv) > 3 else cost_opt
timed = rows[-r.spec.num_decode_forwards:] if r.spec.num_decode_forwards else rows
b = [x["b_over_a"] for x in timed]
summary = {"tag": tag, "cost": cost_opt, **r.summary_row(), "b_over_a_mean": st.mean(b), "b_over_a_min": min(b),
           "b_over_a_max": max(b), "c_over_a_mean": st.mean(x["c_over_a"] for x in timed),
           "a_ms_mean": st.mean(x["a_ms"] for x in timed), "steps_seen": len(rows)}
print(json.dumps(summary))
json.dump({"summary": summary, "rows": rows}, open(f"/work/runs/s47/cost_trace_{tag}.json", "w"))
