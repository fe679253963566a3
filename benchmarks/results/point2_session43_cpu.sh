#!/usr/bin/env bash
# Issue 13 point 2 after the ledger's shorter first window (session 43, 9380a1b): 40.2's protocol, bench_vllm.py,
# plain vs the default at batch 16 and 64, HumanEval and norepeat, three rounds interleaved; then norepeat at
# batch 16 five more rounds (42.2's weakest cell). From a clean worktree, the machine otherwise quiet.
set -u
# No PYTHONPATH here: the package the engines imported was /work/main's editable install, whose code was 9380a1b's
# throughout the run (only docs/design.md changed there meanwhile); ledger_abba_session43_cpu.sh sets it per tree.
cd /work/bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s43  # the outputs were copied to benchmarks/results as they were
date; git log --oneline -1
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set humaneval norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 64 --max-groups 6 --repeats 3 \
  --out $R/point2_b16_b64_3rounds_session43_cpu.json 2>&1 | grep -v -i warn | tail -14
date
/work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
  --prompt-set norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 --max-groups 6 --repeats 5 \
  --out $R/point2_b16_norepeat_5rounds_session43_cpu.json 2>&1 | grep -v -i warn | tail -6
date
