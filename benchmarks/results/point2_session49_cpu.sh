#!/usr/bin/env bash
# Issue 13 point 2 on the policy as of session 48 (908e6bc, the engine-wide probe back-off): 43.3's protocol,
# bench_vllm.py, plain vs the default at batch 16 and 64, HumanEval and norepeat, three rounds interleaved.
# From a clean worktree of the commit, its package imported (PYTHONPATH, results 43.3's caveat), machine otherwise quiet.
set -u
cd /work/bench49
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
date; git rev-parse HEAD; git status --short | head
/work/main/.venv/bin/python -c "import sdsat_vllm; print(sdsat_vllm.__file__)"
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set humaneval norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 64 --max-groups 6 --repeats 3 \
  --out /work/runs/s49/point2_b16_b64_3rounds_session49_cpu.json 2>&1 | grep -v -i warn | tail -14
date
