#!/usr/bin/env bash
# Results 43.3: the ledger's first window end to end, commit against commit: 0fcaf5a (first verdict after 512 lookups)
# and 9380a1b (after 128), each from its own clean worktree (PYTHONPATH: that tree's package, in the engine core too),
# in the order A B B A; each invocation plain then SDSAT's default, norepeat, 64 prompts, 64 tokens, batch 16.
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s43  # the outputs were copied to benchmarks/results as they were
i=0
for tree in benchA bench bench benchA; do
  i=$((i+1)); c=$(git -C /work/$tree rev-parse --short HEAD)
  date; echo "== $i $tree $c"
  (cd /work/$tree && PYTHONPATH=/work/$tree /work/main/.venv/bin/python -c "import sdsat_vllm, sys; print(sdsat_vllm.__file__)" \
   && PYTHONPATH=/work/$tree /work/main/.venv/bin/python benchmarks/bench_vllm.py $M --methods plain sdsat-adaptive-lookup \
    --prompt-set norepeat --num-prompts 64 --max-tokens 64 --batch-sizes 16 --max-groups 6 \
    --out $R/ledger_abba_${i}_${c}_session43_cpu.json 2>&1 | grep -E "^norepeat")
done
date
