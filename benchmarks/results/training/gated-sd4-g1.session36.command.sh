#!/bin/bash
# Session 36: gated drafter on -sd4 continued from session 34/35's 60-step run (gated60), CPU, 2 threads.
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:30000,muzzy_decay_ms:30000
exec .venv/bin/sdsat train --model smollm2-135m-sdsat --mode gated --num-sat 5 --lora-r 8 --lora-alpha 16 \
  --init-adapter /work/runs/s35/gated60/model/sdsat_adapter \
  --lr 1e-3 --sat-lr 1.2e-3 --sat-blocks drafted --max-answer-tokens 64 --blocks-per-seq 64 \
  --batch-size 2 --grad-accum 2 --steps 240 --warmup-steps 10 --eval-every 60 --eval-batches 16 \
  --save-every 10 --log-every 5 --dtype fp32 --shuffle-seed 5 --threads 2 --max-minutes 105 \
  --output-dir runs/gated-sd4-s36 \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz data/smollm2-135m-self-distill.jsonl.gz \
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz
