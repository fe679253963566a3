#!/usr/bin/env bash
# Where batch 16's 2% went (40.2): plain, the adaptive policy with SAT drafts only, and the default (+ lookup chains),
# three rounds, norepeat.
set -u
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
while pgrep -f p2.sh >/dev/null; do sleep 5; done
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive sdsat-adaptive-lookup \
  --prompt-set norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 --max-groups 6 --repeats 3 \
  --out benchmarks/results/b16_lookup_or_not_3rounds_session40_cpu.json 2>&1 | grep -v -i warn | tail -8
date
