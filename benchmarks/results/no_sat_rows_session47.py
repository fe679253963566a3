"""Ad hoc (session 47): the default policy with its SAT tail taken out of every step it sends (DraftPlan.fill
monkeypatched in this process: each row's (drafts, tail) sent as (drafts, 0)), so no SAT row is ever computed and
every draft is a text-lookup or datastore chain scored by its priors and calibration alone; against the default,
in-process engines, batch 1, 16 prompts, 64 tokens. Usage: no_sat_rows.py PROMPT_SET default|notail TAG"""
import json, os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from sdsat_vllm.bench import chat_formatter, engine_kwargs, observe_proposer, prompt_set, quiet_vllm, run_vllm
quiet_vllm()
from vllm import SamplingParams
from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
from sdsat_vllm.vllm_plugin import proposer as prop
pset, variant, tag = sys.argv[1], sys.argv[2], sys.argv[3]
if variant == "notail":
    orig_fill = prop.DraftPlan.fill
    def fill(self, argmaxes, tail, counts=None, chains=None):
        if counts is not None:
            counts = [None if c is None else (c[0], 0) for c in counts]
        return orig_fill(self, argmaxes, tail, counts, chains)
    prop.DraftPlan.fill = fill
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
out = {"tag": tag, "prompt_set": pset, "variant": variant, **r.summary_row(), "token_ids": r.token_ids}
out["accepted_by_source"] = {name: sum(sum(row) for row in cal.accepted)
                             for name, cal in (("sat", dr.calibration), ("text", dr.lookup_calibration),
                                               ("datastore", dr.datastore_calibration))}
if hasattr(dr, "fresh"):
    out["fresh"] = {k: getattr(dr.fresh, k) for k in ("drafts", "gain", "to_fresh", "tail", "steps")}
    out["stale"] = {k: getattr(dr.stale, k) for k in ("drafts", "gain", "to_fresh", "tail", "steps")}
    out["tails_pay_b1"] = dr.tails_pay(1, dr.cost())
import sdsat_vllm
out["package"] = sdsat_vllm.__file__
json.dump(out, open(f"/work/runs/s47/no_sat_rows_{tag}.json", "w"))
out.pop("token_ids")
print(json.dumps(out))
