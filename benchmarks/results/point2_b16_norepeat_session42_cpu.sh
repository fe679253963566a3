#!/usr/bin/env bash
# Results 42.2's weakest cell again, five more rounds: norepeat at batch 16, every output 64 tokens (40.2's protocol),
# from a clean worktree at c38ac13 (the policy of 9dea71a), the machine otherwise quiet.
set -u
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s42  # the outputs were copied to benchmarks/results as they were
date; git log --oneline -1
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 --max-groups 6 --repeats 5 \
  --out $R/point2_b16_norepeat_5rounds_session42_cpu.json 2>&1 | grep -v -i warn | tail -6
date
