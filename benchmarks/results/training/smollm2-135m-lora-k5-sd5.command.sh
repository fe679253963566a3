#!/usr/bin/env bash
# The adapter smollm2-135m-lora-k5-sd5, session 15: -sd4 continued on the same data (another shuffle) with
# --std-target base: the standard positions learn the base model's distribution (KL, the LoRA switched off),
# not the data's tokens, which undid -sd4's drift into repeating itself (benchmarks/results/README.md, 16).
# --threads 2 on the 2-core dev CPU, 12:57-14:17 UTC (a measure_merge.py run shared the CPU 13:00-13:19,
# steps 2-22 ran at ~60 s), stopped by --max-minutes at step 161 and resumed by the same command
# with --max-minutes 30 (14:19-14:28, steps 162-180).
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd5 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 180 --lr 3e-4 --sat-lr 1.2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5-sd4 --shuffle-seed 1 --std-target base \
  --sources data/smollm2-135m-self-distill.jsonl.gz data/smollm2-135m-sdsat-questions.jsonl.gz \
  --heldout-sources data/smollm2-135m-self-distill.heldout.jsonl.gz data/smollm2-135m-sdsat-questions.heldout.jsonl.gz \
  --eval-every 45 --eval-batches 16 --save-every 10 --log-every 5 --threads 2 --max-minutes 80
