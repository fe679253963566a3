# Session 41, the worker traces at batch 64 and 16 (norepeat, slots refilled, every output 64 tokens), ABBA; run from /work/main
# at 0de98af (ws64, ws16) and at 13d5b36 (ws16b: the same script with ws16b_ names). Compared with worker_steps.py --compare.
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so
i=0
for m in plain sdsat-adaptive-lookup sdsat-adaptive-lookup plain; do
  i=$((i+1))
  .venv/bin/python benchmarks/worker_steps.py --method $m --prompt-set norepeat --num-prompts 64 --batch-size 64 --max-tokens 64 --repeats 3 --batching continuous --out /work/runs/s41/ws64_${i}_$m.json > /work/runs/s41/ws64_${i}_$m.log 2>&1
done
.venv/bin/python benchmarks/worker_steps.py --compare /work/runs/s41/ws64_*.json > /work/runs/s41/ws64_compare.txt 2>&1

# the batch-16 block: the same with --batch-size 16 and ws16_ (ws16b_) names
