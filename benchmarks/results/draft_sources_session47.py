"""Ad hoc (session 47): where the default policy's accepted drafts come from, read in an in-process engine at the end
of a timed pass: the drafter's three calibrations (the SAT rows', the text lookups', the datastore's) count, per draft
position, the chains that reached it and those accepted there (AcceptanceCalibration; positions after a chain's first
rejection are not counted). Batch 1, 16 prompts, 64 tokens, the default speculative config."""
import json, os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from sdsat_vllm.bench import chat_formatter, engine_kwargs, observe_proposer, prompt_set, quiet_vllm, run_vllm
quiet_vllm()
from vllm import SamplingParams
from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
model_dir = resolve_model(DEFAULT_SDSAT_MODEL)
pset = sys.argv[1]
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
out = {"prompt_set": pset, **r.summary_row(), "sources": {}}
for name, cal in (("sat", dr.calibration), ("text", dr.lookup_calibration), ("datastore", dr.datastore_calibration)):
    reached = [sum(row) for row in cal.offered]
    acc = [sum(row) for row in cal.accepted]
    out["sources"][name] = {"chains": reached[0], "reached_per_position": reached, "accepted_per_position": acc,
                            "accepted_tokens": sum(acc),
                            "conditional_acceptance": [round(a / o, 3) if o else None for a, o in zip(acc, reached)]}
out["stale"] = {"drafts": dr.stale.drafts, "gain": dr.stale.gain, "to_fresh": dr.stale.to_fresh}; out["alpha_global"] = dr.alpha_global; c = dr.cost(); out["cost_b_over_a"] = c.marginal(1) / c.time(0)
print(json.dumps(out))
json.dump(out, open(f"/work/runs/s47/draft_sources_{pset}.json", "w"), indent=1)
