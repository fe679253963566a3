"""Drafts and tail cut to what a request near its max_tokens can use (SDSATProposer.FIT_TO_ROOM, session 44)
against the cut off: SDSAT's default (adaptive, lookup, the shipped model's datastore) and the fixed policy, greedy,
the first N norepeat and N HumanEval prompts at max_tokens 16 and 64, in groups of B (one generate per group),
engines in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so that the class attribute reaches the proposer) in the
order A B B A for each policy. Per engine and workload: wall time of the timed pass, tokens, decode forwards, vLLM's
acceptance counters.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONPATH=. python benchmarks/results/room_ab_session44.py OUT.json [B [N [POLICIES]]]

(B 1, N 16, POLICIES adaptive,fixed by default.)
"""
import json
import sys
import time

from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
from sdsat_vllm.bench import chat_formatter, cpu_name, engine_kwargs, git_state, prompt_set, run_vllm_workloads, runtime_env
from sdsat_vllm.vllm_plugin.proposer import SDSATProposer


def main():
    from vllm import SamplingParams

    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    num = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    policies = sys.argv[4].split(",") if len(sys.argv) > 4 else ["adaptive", "fixed"]
    model = str(resolve_model(DEFAULT_SDSAT_MODEL))
    workloads, names = [], []
    for name in ("norepeat", "humaneval"):
        prompts, stop = prompt_set(name, num, chat=chat_formatter(model) if name == "norepeat" else None)
        for max_tokens in (16, 64):
            workloads.append((prompts, SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop)))
            names.append(f"{name}-{max_tokens}")
    out = {"command": "VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONPATH=. python " + " ".join(sys.argv),
           "git": git_state("."), "machine": cpu_name(), "runtime": runtime_env(),
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    outputs = {}
    for policy in policies:
        spec = {"model": "sdsat", "num_speculative_tokens": 5, "sdsat_policy": policy}
        for fit in (True, False, False, True):
            SDSATProposer.FIT_TO_ROOM = fit
            _, runs = run_vllm_workloads(model, spec, workloads, batch_sizes=(batch,),
                                         engine_kw=engine_kwargs(max_model_len=768))
            for name, (r,) in zip(names, runs):
                row = {"policy": policy, "fit_to_room": fit, "workload": name, **r.summary_row()}
                out["runs"].append(row)
                outputs.setdefault(name, []).append(json.dumps(r.token_ids))
                print(json.dumps(row), flush=True)
    out["identical_outputs"] = {name: len(set(v)) == 1 for name, v in outputs.items()}
    print("identical outputs", out["identical_outputs"])
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
