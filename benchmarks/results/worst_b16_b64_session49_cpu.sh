#!/usr/bin/env bash
# The worst case at batch 16 and 64 in rounds (session 49): 49.2's one round put the default (adaptive + lookup)
# 5-8% below the SAT-only adaptive policy there with no draft sent; plain, both adaptive engines, three rounds,
# each round every engine afresh. From a clean worktree of 908e6bc, its package imported, machine otherwise quiet.
set -u
cd /work/bench49
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date; git rev-parse HEAD; git status --short | head
/work/main/.venv/bin/python -c "import sdsat_vllm; print(sdsat_vllm.__file__)"
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive sdsat-adaptive-lookup \
  --prompt-set worst --num-prompts 64 --max-tokens 64 --batch-sizes 16 64 --max-groups 6 --repeats 3 \
  --out /work/runs/s49/worst_b16_b64_3rounds_session49_cpu.json 2>&1 | grep -v -i warn | tail -12
date
