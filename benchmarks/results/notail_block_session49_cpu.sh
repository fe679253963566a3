#!/usr/bin/env bash
# Session 49: the default policy against the same with no SAT tail ever sent, A B B A per prompt set, twice,
# in-process engines, batch 1, 16 prompts of 64 tokens; fast runtime of results 38.1, machine quiet.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
date; git log --oneline -1; git diff --stat
for s in norepeat humaneval; do  # stopped by hand after the first four norepeat runs (results 49.1)
  i=0
  for v in default notail notail default default notail notail default; do
    i=$((i+1))
    PYTHONPATH=. .venv/bin/python benchmarks/results/notail_priced_session49.py $s $v nt_${s}_${i}_$v 2>&1 | grep '^{"tag"'
  done
done
date
