#!/usr/bin/env bash
# Drafts cut to what a request near its max_tokens can use (session 44, f3a8830): the cut on and off in one process,
# A B B A per policy; batch 1 (16 prompts a set, adaptive and fixed), then batch 16 (64 prompts a set, adaptive).
# From /work/main at f3a8830 (PYTHONPATH=.), the machine otherwise quiet.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
R=/work/runs/s44  # the outputs were copied to benchmarks/results as they were
date; git log --oneline -1
PYTHONPATH=. .venv/bin/python benchmarks/results/room_ab_session44.py $R/room_ab_b1_session44_cpu.json 1 16 2>&1 \
  | grep '^{\|identical'
date
PYTHONPATH=. .venv/bin/python benchmarks/results/room_ab_session44.py $R/room_ab_b16_session44_cpu.json 16 64 adaptive 2>&1 \
  | grep '^{\|identical'
date
