"""Ad hoc (session 49): the default policy (engine-wide probe back-off, 48.1) against the same with its SAT tail taken
out of every step (DraftPlan.fill monkeypatched in this process, each row's (drafts, tail) sent as (drafts, 0), as in
no_sat_rows_session47.py), in-process engines, batch 1, 16 prompts, 64 tokens; logs every timed decode step for 48.2's
priced protocol. Usage: notail_priced_session49.py PROMPT_SET default|notail TAG"""
import json, os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from sdsat_vllm.bench import chat_formatter, engine_kwargs, observe_proposer, prompt_set, quiet_vllm, run_vllm
quiet_vllm()
from vllm import SamplingParams
from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
from sdsat_vllm.vllm_plugin import policy as pol
from sdsat_vllm.vllm_plugin import proposer as prop
pset, variant, tag = sys.argv[1], sys.argv[2], sys.argv[3]
if variant == "notail":
    orig_fill = prop.DraftPlan.fill
    def fill(self, argmaxes, tail, counts=None, chains=None):
        if counts is not None:
            counts = [None if c is None else (c[0], 0) for c in counts]
        return orig_fill(self, argmaxes, tail, counts, chains)
    prop.DraftPlan.fill = fill
counts = {"decisions": 0, "probes": 0, "tail_rows": 0, "sat_chains": 0}
orig_decide = pol.AdaptiveDrafter.decide
def decide(self, req_id, fresh_q, **kw):
    d = orig_decide(self, req_id, fresh_q, **kw)
    counts["decisions"] += 1
    counts["probes"] += int(d.probe)
    counts["tail_rows"] += d.tail
    counts["sat_chains"] += int(d.drafts > 0 and not d.lookup)
    return d
pol.AdaptiveDrafter.decide = decide
steps = []  # every decode step the proposer timed: (tokens, seconds, speculative path)
orig_observe = pol.AdaptiveDrafter.observe_step
def observe_step(self, n_tokens, seconds, speculative=True, sampling=None, requests=None):
    steps.append((int(n_tokens), float(seconds), bool(speculative)))
    return orig_observe(self, n_tokens, seconds, speculative, sampling, requests)
pol.AdaptiveDrafter.observe_step = observe_step
model_dir = resolve_model(DEFAULT_SDSAT_MODEL)
prompts, stop = prompt_set(pset, 64 if pset == "humaneval" else 32, 0, chat_formatter(model_dir))
prompts = prompts[:16]
sampling = SamplingParams(temperature=0.0, max_tokens=64, stop=stop)
seen = {}
def obs(proposer, a, call):
    seen["p"] = proposer
    return call()
with observe_proposer(obs):
    run = run_vllm(model_dir, {"model": "sdsat", "num_speculative_tokens": 5}, prompts, sampling, batch_sizes=[1],
                   engine_kw={**engine_kwargs(max_model_len=2048), "max_num_seqs": 4})
r = run.runs[0]
dr = seen["p"].drafter
out = {"tag": tag, "prompt_set": pset, "variant": variant, **r.summary_row(), "token_ids": r.token_ids, **counts}
out["accepted_by_source"] = {name: sum(sum(row) for row in cal.accepted)
                             for name, cal in (("sat", dr.calibration), ("text", dr.lookup_calibration),
                                               ("datastore", dr.datastore_calibration))}
import sdsat_vllm
out["package"] = sdsat_vllm.__file__
out["steps"] = steps
json.dump(out, open(f"/work/runs/s49/notail_{tag}.json", "w"))
out.pop("token_ids"); out.pop("steps")
print(json.dumps(out))
