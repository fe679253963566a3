#!/bin/bash
# Session 37: -g1 with its delta on the attention and MLP inputs only (2 of vLLM's 4 packed layers), 120 steps, CPU, 2 threads.
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:30000,muzzy_decay_ms:30000
exec .venv/bin/sdsat train --model smollm2-135m-sdsat --mode gated --num-sat 5 --lora-r 8 --lora-alpha 16 \
  --init-adapter runs/gated-sd4-s36/model/sdsat_adapter --gated-targets q_proj k_proj v_proj gate_proj up_proj \
  --lr 1e-3 --sat-lr 1.2e-3 --sat-blocks drafted --max-answer-tokens 64 --blocks-per-seq 64 \
  --batch-size 2 --grad-accum 2 --steps 120 --warmup-steps 10 --eval-every 40 --eval-batches 16 \
  --save-every 10 --log-every 5 --dtype fp32 --shuffle-seed 6 --threads 2 --max-minutes 55 \
  --output-dir runs/gated-in-s37 \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz data/smollm2-135m-self-distill.jsonl.gz \
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz
