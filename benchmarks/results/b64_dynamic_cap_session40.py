"""Session 40 (results 40.4): at batch 64 on norepeat, what does the SDSAT engine cost when nothing is drafted: the
adaptive policy in full back-off against vLLM's dynamic speculative decoding set to 0 drafts at that batch size
(`num_speculative_tokens_per_batch_size`: the proposer returns at once, nothing read, decided or timed), and plain
decoding. Rounds interleaved (plain, default, capped, capped, default, plain, ...), each engine built afresh.

Usage: python b64_dynamic_cap_session40.py OUT.json [ROUNDS]   (a record of what ran)
"""

import json
import sys
import time

from sdsat_vllm.bench import engine_kwargs, git_state, one_set_workload, run_vllm_workloads, runtime_env

B, PROMPTS, MAX_TOKENS = 64, 64, 64


def main() -> None:
    env = runtime_env()  # before vLLM is imported (see there)
    out, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
    work = one_set_workload(None, "norepeat", PROMPTS, MAX_TOKENS)
    sdsat = {"model": "sdsat", "num_speculative_tokens": work.num_sat}
    configs = {"plain": None, "sdsat default": sdsat,
               "sdsat, 0 drafts from batch 16": {**sdsat, "num_speculative_tokens_per_batch_size":
                                                 [[1, 15, work.num_sat], [16, 512, 0]]}}
    names = list(configs)
    rows = {name: [] for name in names}
    outputs = {}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            _, [[run]] = run_vllm_workloads(work.model_dir, configs[name], [(work.prompts, work.sampling)],
                                            batch_sizes=[B], engine_kw=engine_kwargs(max_model_len=2048),
                                            batching="continuous")
            rows[name].append(run.tokens_per_s)
            outputs.setdefault(name, run.token_ids)
            print(f"round {r} {name:32s} {run.tokens_per_s:7.1f} tok/s  drafts {run.spec.num_draft_tokens}", flush=True)
    plain = sum(rows["plain"]) / rounds
    result = {"command": " ".join(sys.argv), "git": git_state(), "env": env, "time": time.ctime(),
              "batch_size": B, "prompts": PROMPTS, "max_tokens": MAX_TOKENS, "configs": configs,
              "tokens_per_s_runs": rows,
              "speedup_vs_plain": {name: sum(v) / rounds / plain for name, v in rows.items()},
              "outputs_differing_from_plain": {name: sum(a != b for a, b in zip(o, outputs["plain"]))
                                               for name, o in outputs.items()}}
    json.dump(result, open(out, "w"), indent=1)
    for name in names:
        print(f"{name:32s} {result['speedup_vs_plain'][name]:.3f}x  differ {result['outputs_differing_from_plain'][name]}")


if __name__ == "__main__":  # vLLM spawns its engine core: the module must import without running
    main()
