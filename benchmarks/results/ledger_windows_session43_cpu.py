"""Ad hoc (session 43): what LookupLedger sees at batch 16 (bench_vllm's protocol: 64 prompts, 64 tokens, continuous), a fresh engine per round.

    python ledger_windows_session43_cpu.py 16 norepeat 2   # batch size, prompt set, rounds; output: ledger_windows_session43_cpu.txt
"""
import os, sys, time, json
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
from sdsat_vllm.bench import engine_kwargs, generate_continuous, one_set_workload, quiet_vllm
from sdsat_vllm.vllm_plugin import shutdown_llm
from sdsat_vllm.vllm_plugin.policy import LookupLedger
quiet_vllm()
from vllm import LLM
B = int(sys.argv[1]); SET = sys.argv[2]; ROUNDS = int(sys.argv[3])
calls = []
orig = LookupLedger.add_lookups
def wrapped(self, count, seconds, worth, token_seconds):
    before = self.stride
    orig(self, count, seconds, worth, token_seconds)
    calls.append((id(self), count, seconds, worth, token_seconds, before, self.stride, self.lookups == 0 and count > 0))
LookupLedger.add_lookups = wrapped
work = one_set_workload(None, SET, 64, 64)
spec = {"model": "sdsat", "num_speculative_tokens": work.num_sat, "sdsat_policy": "adaptive", "sdsat_lookup": True}
for r in range(ROUNDS):
    calls.clear()
    llm = LLM(model=str(work.model_dir), speculative_config=spec, max_num_seqs=B, **engine_kwargs(max_model_len=1024))
    try:
        t0 = time.perf_counter()
        outs = generate_continuous(llm, work.prompts, work.sampling, B)
        wall = time.perf_counter() - t0
    finally:
        shutdown_llm(llm)
    n = len(calls); lk = sum(c[1] for c in calls); sec = sum(c[2] for c in calls); w = sum(c[3] for c in calls)
    ts = [c[4] for c in calls if c[4]]
    verdicts = [(i, c[5], c[6]) for i, c in enumerate(calls) if c[7]]
    wins, acc = [], [0, 0.0, 0.0, 0]
    for c in calls:
        acc[0] += c[1]; acc[1] += c[2]; acc[2] += c[3]; acc[3] += 1
        if acc[0] >= 128 and c[4]:
            wins.append((acc[3], acc[0], round(acc[2], 1), round(acc[1] / c[4], 1), c[6])); acc = [0, 0.0, 0.0, 0]
    print("windows (calls, lookups, worth, spent, stride after):", wins)
    # window summaries: accumulate until a reset
    print(json.dumps({"round": r, "wall_s": round(wall, 2), "ledger_calls": n, "lookups": lk, "lookup_s": round(sec, 4),
                      "worth_tokens": round(w, 2), "token_s_last": ts[-1] if ts else None,
                      "spent_tokens": round(sec / ts[-1], 2) if ts else None, "verdicts": verdicts}), flush=True)
