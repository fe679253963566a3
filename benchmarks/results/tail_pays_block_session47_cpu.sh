#!/usr/bin/env bash
# Session 47: the default policy before (fe64ce4) and after tail_pays (working tree of /work/main, committed after
# this block), A B B A per prompt set, in-process engines, batch 1, 16 prompts of 64 tokens, fast runtime of 38.1,
# the machine otherwise quiet. Each run's package path is in its JSON (PYTHONPATH picks the tree).
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
date
for s in norepeat humaneval; do
  i=0
  for tree in old new new old; do
    i=$((i+1))
    if [ $tree = old ]; then cd /work/runs/s47/wt_old; else cd /work/main; fi
    PYTHONPATH=. /work/main/.venv/bin/python /work/runs/s47/no_sat_rows.py $s default tp_${s}_${i}_$tree 2>&1 | grep '^{"tag"' | cut -c1-330
  done
done
date
