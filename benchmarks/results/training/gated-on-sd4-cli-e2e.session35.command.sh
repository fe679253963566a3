set -e
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:30000,muzzy_decay_ms:30000
rm -rf /work/runs/s35/gated-e2e
date -u
.venv/bin/sdsat train --model smollm2-135m-sdsat --output-dir /work/runs/s35/gated-e2e --mode gated --num-sat 5 \
  --steps 3 --batch-size 2 --grad-accum 1 --blocks-per-seq 32 --lr 1e-3 --sat-lr 1.2e-3 --warmup-steps 1 \
  --dtype fp32 --sat-blocks drafted --max-answer-tokens 64 --eval-every 3 --eval-batches 4 --log-every 1 --threads 1 \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz
date -u
cat /work/runs/s35/gated-e2e/adapter/sdsat.json | python -c "import json,sys; d=json.load(sys.stdin); print(d['sdsat']); print(len(d['gated']['base_tensors']))"
