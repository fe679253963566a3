#!/usr/bin/env bash
# The adapter smollm2-135m-lora-k5-sd7, session 31: the default adapter -sd4 continued on the served model's
# own answers (-sd4 merged: data/smollm2-135m-sdsat4-questions*.jsonl.gz, both built-in question sets, never
# trained on before) plus the code rows, with --std-target init: the standard positions keep the
# distribution of the model they started from (KL from a frozen copy of -sd4's model), so the served
# model stays -sd4's while the SATs learn its answers (benchmarks/results/README.md, 31).
# --threads 2 on the 2-core dev CPU, the machine otherwise quiet but for file edits.
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd7 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 150 --lr 3e-4 --sat-lr 1.2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5-sd4 --shuffle-seed 3 --std-target init \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz \
            data/smollm2-135m-self-distill.jsonl.gz \
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 50 --eval-batches 16 --save-every 10 --log-every 5 --threads 2 --max-minutes 70
