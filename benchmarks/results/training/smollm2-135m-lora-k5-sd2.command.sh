#!/usr/bin/env bash
# The default adapter (sdsat_vllm/adapters/smollm2-135m-lora-k5-sd2), session 4, trainer as of commit 8084ef1
# (packing without an EOS target after a completion cut by max_tokens, no label across a document boundary).
# Warm start from the stdlib adapter (smollm2-135m-lora-k5), the shipped self-distilled data (data/). One run in
# three sittings on the 2-core dev CPU, shared with other jobs (helpers' vLLM runs, a CI run) most of the time:
# steps 1-20 with --threads 2 (18:14-18:42 UTC), 21-100 with --threads 1 (18:42-19:37), 101-150 with --threads 2
# (19:37-19:55); stopped after the step-150 checkpoint and exported by re-running with --steps 150. The cosine
# schedule was set for 240 steps, so the learning rate at step 150 was still 2.0e-4 (LoRA) / 8.1e-4 (SAT row).
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd2 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 240 --lr 5e-4 --sat-lr 2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5 \
  --sources data/smollm2-135m-self-distill.jsonl.gz --heldout-sources data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 20 --eval-batches 16 --save-every 5 --log-every 5 --threads 2 --max-minutes 110
# export at step 150:
sdsat train ...same flags... --steps 150
# held-out evaluation of an adapter on the same rows (heldout_eval_session4.json; step 0 of the curve):
sdsat train ...same flags... --output-dir runs/eval-X --init-adapter ADAPTER --lr 0 --sat-lr 0 --steps 1 --no-export
