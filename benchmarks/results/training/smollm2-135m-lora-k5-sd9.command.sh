#!/usr/bin/env bash
# The run smollm2-135m-lora-k5-sd9, session 34: the default adapter -sd4 continued 150 steps with its LoRA frozen
# (--freeze-lora: only the SAT rows train, so the served model is -sd4's bit for bit at every standard token), on
# the rows -sd8 trained on (both question sets' answers of -sd4's model + the code rows), SAT blocks only where
# serving drafts (--sat-blocks drafted), each make-data row cut to its prompt + the first 64 tokens of its answer
# (--max-answer-tokens 64). Held-out rows are cut alike, so the run's own eval measures the openings.
# 2 threads on the 2-core dev CPU (AMD EPYC), jemalloc preloaded:
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:30000,muzzy_decay_ms:30000
# 03:08-04:19 UTC: stopped at step 10 and resumed (same command), stopped by --max-minutes at 106 and resumed;
# ~26.5 s a step (a `lora` step of the same batch took 42-56 s in session 33).
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd9 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 150 --lr 3e-4 --sat-lr 2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5-sd4 --freeze-lora --shuffle-seed 5 \
  --sat-blocks drafted --max-answer-tokens 64 \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz \
            data/smollm2-135m-self-distill.jsonl.gz \
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 50 --eval-batches 16 --save-every 10 --log-every 5 --threads 2 --max-minutes 45
