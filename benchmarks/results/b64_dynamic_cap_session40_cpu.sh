#!/usr/bin/env bash
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
date
.venv/bin/python benchmarks/results/b64_dynamic_cap_session40.py benchmarks/results/b64_dynamic_cap_session40_cpu.json 2 2>&1 > /work/runs/s40/b64.full.log; grep -v -i warn /work/runs/s40/b64.full.log | tail -12
date
