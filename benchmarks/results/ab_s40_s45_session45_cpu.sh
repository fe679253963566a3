#!/usr/bin/env bash
# The full run of 45.2 read the SAT-only adaptive engine 9-12% slower against plain at batch 1 than 40.1 (one round
# each), and the default 5%: session 40's code (0ac5d1e) against this session's (1aac49c), A B B A, each tree's
# package imported (PYTHONPATH), norepeat at batch 1, 8 prompts, plain and both adaptive engines in each invocation.
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
run() {  # tree label
  cd /work/$1 && export PYTHONPATH=$PWD
  echo "== $2 $(git rev-parse --short HEAD) $(date +%T) $(/work/main/.venv/bin/python -c 'import sdsat_vllm; print(sdsat_vllm.__file__)')"
  /work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive sdsat-adaptive-lookup \
    --prompt-set norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 1 --max-groups 8 \
    --out /work/runs/s45/ab_$2.json > /work/runs/s45/ab_$2.log 2>&1
  grep -E "^\| norepeat" /work/runs/s45/ab_$2.md
}
run bench40 A1; run bench45 B1; run bench45 B2; run bench40 A2
date
