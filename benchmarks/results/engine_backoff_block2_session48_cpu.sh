#!/usr/bin/env bash
# Session 48 (second block, with every timed step logged): the engine-wide probe back-off (new default) against the per-request one (session 47's policy), A B B A
# per prompt set, in-process engines, batch 1, 16 prompts of 64 tokens; fast runtime of results 38.1, machine quiet.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
date; git log --oneline -1; git diff --stat
for s in norepeat humaneval; do
  i=0
  for v in engine perrequest perrequest engine; do
    i=$((i+1))
    PYTHONPATH=. .venv/bin/python benchmarks/results/engine_backoff_session48.py $s $v eb2_${s}_${i}_$v 2>&1 | grep '^{"tag"'
  done
done
date
