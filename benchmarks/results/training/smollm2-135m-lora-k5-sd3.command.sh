#!/usr/bin/env bash
# The default adapter (sdsat_vllm/adapters/smollm2-135m-lora-k5-sd3), sessions 4-5: the run of -sd2
# (smollm2-135m-lora-k5-sd2.command.sh: steps 1-150, cosine set for 240 steps) continued from its step-150
# checkpoint with the schedule set for 400 steps (the learning rate rose from 2.0e-4 to 3.6e-4 at step 151,
# and was 2.2e-4 at step 240), --threads 1, nice 10, on the 2-core dev CPU shared with this session's vLLM
# tests and benchmarks (40-90 s per step; paused during two benchmarks): steps 151-240, 21:27-23:27 UTC,
# stopped after the step-240 checkpoint and exported by re-running with --steps 240.
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd2 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 400 --lr 5e-4 --sat-lr 2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5 \
  --sources data/smollm2-135m-self-distill.jsonl.gz --heldout-sources data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 20 --eval-batches 16 --save-every 5 --log-every 5 --threads 1 --max-minutes 135 --no-export
# export at step 240:
sdsat train ...same flags... --steps 240 --threads 2   (without --no-export)
