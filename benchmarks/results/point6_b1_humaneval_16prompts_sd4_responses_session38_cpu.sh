#!/usr/bin/env bash
# Record of results 38.4 (session 38), from a clean worktree of 5f09c06 (/work/bench): HumanEval, 30.4's protocol, the shipped
# default (-sd4) with a datastore of its own responses, fast runtime (38.1).
set -u
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods suffix sdsat-adaptive-lookup --sdsat-response-tokens 65536 \
  --prompt-set humaneval --num-prompts 64 --max-tokens 64 --batch-sizes 1 --max-groups 16 --repeats 2 \
  --suffix-cached-requests 10000 --out /work/runs/s38/point6_b1_humaneval_16prompts_sd4_responses_session38_cpu.json 2>&1 | grep -v -i warn | tail -15
date
