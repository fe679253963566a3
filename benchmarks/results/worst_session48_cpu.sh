#!/usr/bin/env bash
# Point 1's worst case after the engine-wide probe back-off (session 48): 45.3's protocol, the default beside plain
# only, two rounds; from /work/main at the commit named in the JSON (PYTHONPATH=.), the machine otherwise quiet.
set -u
cd /work/main
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date; git rev-parse HEAD; git status --short | head
.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set worst --num-prompts 64 --max-tokens 64 --batch-sizes 1 4 --max-groups 6 --repeats 2 \
  --out /work/runs/s48/worst_b1_b4_2rounds_session48_cpu.json 2>&1 | grep -v -i warn | tail -12
date
