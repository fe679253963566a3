#!/usr/bin/env bash
# Is the default's online cost model drafting too little on this VM? Point 6's norepeat half (44.2's protocol:
# batch 1, 16 prompts of 64 tokens, two rounds, 38.1's fast runtime) with the policy's cost fixed at r (T(N) = 1 + rN)
# below and above what it measures online; plain in the same invocation as the ratio's base.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s46
date; git log --oneline -1
for r in 0.02 0.1; do
  PYTHONPATH=. .venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup --sdsat-cost $r \
    --prompt-set norepeat --num-prompts 32 --max-tokens 64 --batch-sizes 1 --max-groups 16 --repeats 2 \
    --out $R/cost_r${r}_b1_norepeat_session46_cpu.json 2>&1 | grep -v -i warn | tail -6
  date
done
