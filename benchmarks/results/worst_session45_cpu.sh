#!/usr/bin/env bash
# Point 1's worst case after the full run (45.2) read 0.90x / 0.92x plain at batch 1 / 4 for the default (one round):
# three rounds, interleaved, with the SAT-only adaptive engine beside it (what the lookups add); 40.2's protocol.
set -u
cd /work/bench45
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date; git rev-parse HEAD
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive sdsat-adaptive-lookup \
  --prompt-set worst --num-prompts 64 --max-tokens 64 --batch-sizes 1 4 --max-groups 6 --repeats 3 \
  --out /work/runs/s45/worst_b1_b4_3rounds_session45_cpu.json
date
