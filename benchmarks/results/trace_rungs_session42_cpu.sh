#!/usr/bin/env bash
# Results 42.1: the proposer's time per step at batch 64 while the batch drains (norepeat, 64 prompts, outputs of
# 32-96 tokens, slots refilled), before (b0923c2) and after (082f0ec) the idle shortcut across rungs: the same
# tracer (082f0ec's benchmarks/trace_steps.py) over each commit's package, one in-process engine each, in turn.
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
R=/work/runs/s42  # the outputs were copied to benchmarks/results as they were
for tree in bench_old bench bench_old bench; do
  c=$(git -C /work/$tree rev-parse --short HEAD)
  date; echo "== $tree $c"
  (cd /work/$tree && PYTHONPATH=/work/$tree /work/main/.venv/bin/python /work/bench/benchmarks/trace_steps.py $M \
    --prompt-set norepeat --num-prompts 64 --batch-size 64 --max-tokens 64 --batching continuous --length-spread 0.5 \
    --repeats 2 --quiet --out $R/trace_b64_drain_${c}_$(date +%H%M%S).json 2>&1 | grep -E "^run|proposer:|wrote")
done
date
