#!/usr/bin/env bash
# The default adapter (sdsat_vllm/adapters/smollm2-135m-lora-k5-sd), session 3, commit b1afdfb+ (trainer as of f4cd1e2).
# Warm start from the previous default (smollm2-135m-lora-k5, stdlib), self-distilled data (data/, made by
# `sdsat make-data`, see data/README.md). One run in three sittings on the 2-core dev CPU, shared with
# other jobs throughout: steps 1-25 with --threads 1 (16:12-16:36 UTC), 26-100 with --threads 2
# (16:36-17:16), stopped after the step-100 checkpoint and exported by re-running with --steps 100.
# The cosine schedule was set for 200 steps, so the learning rate at step 100 was still 3.0e-4.
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 200 --lr 5e-4 --sat-lr 2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5 \
  --sources data/smollm2-135m-self-distill.jsonl.gz --heldout-sources data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 20 --eval-batches 16 --save-every 5 --log-every 5 --threads 2
# export at step 100:
sdsat train ...same flags... --steps 100
# step 0 of the agreement curve: the same flags with --lr 0 --sat-lr 0 --steps 1 --no-export (the warm start, evaluated)
