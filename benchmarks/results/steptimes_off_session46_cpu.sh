#!/usr/bin/env bash
# Is it the step-time pricing (policy.StepTimes, batch 1) that makes the online cost model send more draft tokens than
# a fixed r (46.4)? A B B A, engines in one process: the default (online) and the default with StepTimes reading
# nothing (StepTimes.time -> None: drafts priced by the online linear fit alone), norepeat at batch 1, 32 prompts of
# 64 tokens, 38.1's fast runtime; plain in each invocation as its ratio's base. A session experiment (a monkeypatch
# in the benchmark's process), not a change to the code.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s46
date; git log --oneline -1; git status --short | head -3
i=0
for v in online nosteptimes nosteptimes online; do
  i=$((i+1))
  PYTHONPATH=. V=$v .venv/bin/python - $M --methods plain sdsat-adaptive-lookup \
    --prompt-set norepeat --num-prompts 32 --max-tokens 64 --batch-sizes 1 --max-groups 32 --in-process \
    --out $R/steptimes_abba_${i}_${v}_session46_cpu.json <<'PY' 2>&1 | grep "^norepeat"
import os, runpy, sys
sys.argv = ["bench_vllm.py"] + sys.argv[1:]
if os.environ["V"] == "nosteptimes":
    from sdsat_vllm.vllm_plugin import policy
    policy.StepTimes.time = lambda self, n_tokens: None
runpy.run_path("benchmarks/bench_vllm.py", run_name="__main__")
PY
  date
done
