#!/usr/bin/env bash
# Session 47: is the online cost estimate's run-to-run spread its within-run noise or the VM's level? One in-process
# engine per invocation, norepeat, batch 1, 16 prompts, the default policy; online and a fixed r = 0.1 interleaved.
# (kept as it ran: /work/runs/s47/cost_trace.py is benchmarks/results/cost_trace_session47.py)
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
date; git log --oneline -1
i=0
for cost in online 0.1 online online 0.1 online; do
  i=$((i+1))
  PYTHONPATH=. .venv/bin/python /work/runs/s47/cost_trace.py 16 $cost run${i}_$cost 2>&1 | grep '^{"tag"'
done
date
