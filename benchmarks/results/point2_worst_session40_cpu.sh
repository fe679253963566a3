#!/usr/bin/env bash
# Issue 13 point 2 (and point 1's worst case): the default against plain at the batch sizes where the full run (40.1)
# had them within 1-4%, three rounds each, interleaved (plain, sdsat, sdsat, plain, plain, sdsat).
set -u
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set humaneval norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 64 --max-groups 6 --repeats 3 \
  --out benchmarks/results/point2_b16_b64_3rounds_session40_cpu.json 2>&1 | grep -v -i warn | tail -14
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set worst --num-prompts 64 --max-tokens 64 --batch-sizes 1 4 --max-groups 6 --repeats 3 \
  --out benchmarks/results/worst_b1_b4_3rounds_session40_cpu.json 2>&1 | grep -v -i warn | tail -10
date
