"""Ad hoc (session 49, 49.6): where the default loses 4.5% on the worst case at batch 16 (49.4). One in-process engine,
the worst set (64 prompts, 64 tokens, temperature 1 seeded), batch 16; logs every decode step the proposer times
(tokens, seconds, speculative path) and counts the decisions that probe or draft.
With a third argument "cost": also the drafter's cost model at the end (its c, the speculative path's price).
Usage: worst_steps_session49.py adaptive|default TAG [cost]"""
import json, os, statistics, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from sdsat_vllm.bench import engine_kwargs, observe_proposer, one_set_workload, quiet_vllm, run_vllm
quiet_vllm()
from sdsat_vllm.vllm_plugin import policy as pol
variant, tag = sys.argv[1], sys.argv[2]
counts = {"decisions": 0, "probes": 0, "drafting": 0, "tail_rows": 0}
orig_decide = pol.AdaptiveDrafter.decide
def decide(self, req_id, fresh_q, **kw):
    d = orig_decide(self, req_id, fresh_q, **kw)
    counts["decisions"] += 1
    counts["probes"] += int(d.probe)
    counts["drafting"] += int(d.drafts > 0)
    counts["tail_rows"] += d.tail
    return d
pol.AdaptiveDrafter.decide = decide
steps = []
orig_observe = pol.AdaptiveDrafter.observe_step
def observe_step(self, n_tokens, seconds, speculative=True, sampling=None, requests=None):
    steps.append((int(n_tokens), float(seconds), bool(speculative), sampling))
    return orig_observe(self, n_tokens, seconds, speculative, sampling, requests)
pol.AdaptiveDrafter.observe_step = observe_step
w = one_set_workload(None, "worst", 64, 64)
spec = {"model": "sdsat", "num_speculative_tokens": 5, "sdsat_policy": "adaptive",
        "sdsat_lookup": variant == "default"}
seen = {}
def obs(proposer, a, call):
    seen["p"] = proposer
    return call()
with observe_proposer(obs):
    run = run_vllm(w.model_dir, spec, w.prompts, w.sampling, batch_sizes=[16],
                   engine_kw={**engine_kwargs(max_model_len=2048)})
r = run.runs[0]
def summary(sel):
    xs = [s for s in steps if sel(s)]
    return {"steps": len(xs), "seconds": round(sum(s[1] for s in xs), 3),
            "median_ms": round(1e3 * statistics.median([s[1] for s in xs]), 2) if xs else None,
            "median_sampling_ms": round(1e3 * statistics.median([s[3] for s in xs if s[3] is not None]), 2)
            if any(s[3] is not None for s in xs) else None}
out = {"tag": tag, "variant": variant, "tok_per_s": r.summary_row()["tok_per_s"], **counts,
       "speculative_steps": summary(lambda s: s[2]), "plain_steps": summary(lambda s: not s[2]),
       "speculative_steps_n16": summary(lambda s: s[2] and 15 <= s[0] <= 17),
       "plain_steps_n16": summary(lambda s: not s[2] and s[0] == 16)}
if len(sys.argv) > 3 and sys.argv[3] == "cost":
    cm = seen["p"].drafter.cost()
    plain = cm.time(16)
    out["cost_model"] = {"knots": cm.knots, "step_overhead": cm.step_overhead,
                         "c_over_plain_step_at_16_tokens": round(cm.step_overhead / plain, 4)}
print(json.dumps(out))
