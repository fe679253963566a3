"""norepeat at concurrency B with continuous batching: all prompts in one `generate`, max_num_seqs=B
(a request that ends frees its slot for the next prompt), plain vs SDSAT default, engines in one process,
in the order plain, SDSAT, SDSAT, plain (one 8-token warm-up each).

    python benchmarks/continuous_batch.py B NUM_PROMPTS      # e.g. 4 24, 16 48 (results 17.2)

bench_vllm.py submits a batch size's prompts in groups of B, one `generate` per group, so a group lasts
as long as its longest request; a server refills a slot as soon as its request ends. This script
measures the second, to tell how much of a grouped figure is the grouping (a session script, kept as
run; prints tokens/s per engine and the ratio of the rounds' means)."""
import os, sys, time
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1"); os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from sdsat_vllm.bench import engine_kwargs, one_set_workload, quiet_vllm
from sdsat_vllm.vllm_plugin import shutdown_llm
quiet_vllm()
from vllm import LLM, SamplingParams
if len(sys.argv) != 3 or not all(a.isdigit() and int(a) > 0 for a in sys.argv[1:]):
    sys.exit("usage: python benchmarks/continuous_batch.py B NUM_PROMPTS  (positive integers, e.g. 16 48)")
B, NP = int(sys.argv[1]), int(sys.argv[2])
w = one_set_workload(None, "norepeat", NP, 64)
res = {}
for name in ["plain", "sdsat", "sdsat", "plain"]:
    spec = None if name == "plain" else {"model": "sdsat", "num_speculative_tokens": w.num_sat}
    llm = LLM(model=str(w.model_dir), speculative_config=spec, max_num_seqs=B, **engine_kwargs(max_model_len=1024))
    llm.generate(w.prompts[:B], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    t = time.perf_counter(); outs = llm.generate(w.prompts, w.sampling, use_tqdm=False); dt = time.perf_counter() - t
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    res.setdefault(name, []).append((n / dt, [list(o.outputs[0].token_ids) for o in outs]))
    print(name, "tok/s %.1f" % (n / dt), n, flush=True)
    shutdown_llm(llm); del llm
p = [r[0] for r in res["plain"]]; s = [r[0] for r in res["sdsat"]]
print("B", B, "prompts", NP, "plain", p, "sdsat", s, "ratio of means %.3f" % (sum(s) / sum(p)),
      "identical", all(a == b for a, b in zip(res["plain"][0][1], res["sdsat"][0][1])))
