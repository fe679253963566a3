#!/usr/bin/env bash
# Session 49 (49.6): the worst case at batch 16, SAT-only adaptive against the default, A B B A, steps logged by path.
set -u
cd /work/main
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
date; git log --oneline -1
i=0
for v in adaptive default default adaptive; do
  i=$((i+1))
  .venv/bin/python benchmarks/results/worst_steps_session49.py $v ws_${i}_$v 2>&1 | grep '^{"tag"'
done
date
