#!/usr/bin/env bash
# The adapter smollm2-135m-lora-k5-sd4, session 14: the default adapter -sd3 continued on its code data
# (data/smollm2-135m-self-distill.*) plus the served model's own answers to general questions
# (data/smollm2-135m-sdsat-questions.*, `sdsat make-data --sources builtin:questions`, see data/README.md).
# One sitting, 180 steps, --threads 2 on the 2-core dev CPU (quiet but for file edits), 09:50-10:58 UTC.
# The run read the same rows from uncompressed copies of the two question files (/work/runs/q/questions_sd3*.jsonl).
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd4 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 180 --lr 3e-4 --sat-lr 1.2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5-sd3 \
  --sources data/smollm2-135m-self-distill.jsonl.gz data/smollm2-135m-sdsat-questions.jsonl.gz \
  --heldout-sources data/smollm2-135m-self-distill.heldout.jsonl.gz data/smollm2-135m-sdsat-questions.heldout.jsonl.gz \
  --eval-every 50 --eval-batches 16 --save-every 10 --log-every 5 --threads 2 --max-minutes 75
