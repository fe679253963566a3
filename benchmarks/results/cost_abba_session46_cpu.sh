#!/usr/bin/env bash
# The online cost model against a fixed r = 0.1 (this VM's step times: b/a 0.098, step_times_b1_norepeat_session46_cpu.json),
# A B B A, norepeat at batch 1, 32 prompts of 64 tokens, engines in one process (bench_vllm.py --in-process), 38.1's
# fast runtime; plain in each invocation as its ratio's base. From /work/main (PYTHONPATH=.), machine otherwise quiet.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s46
date; git log --oneline -1; git status --short | head
i=0
for cost in online 0.1 0.1 online; do
  i=$((i+1))
  PYTHONPATH=. .venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup --sdsat-cost $cost \
    --prompt-set norepeat --num-prompts 32 --max-tokens 64 --batch-sizes 1 --max-groups 32 --in-process \
    --out $R/cost_abba_${i}_${cost}_session46_cpu.json 2>&1 | grep "^norepeat" 
  date
done
