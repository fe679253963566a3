#!/usr/bin/env bash
# The run smollm2-135m-lora-k5-sd8, session 33: -sd7 continued 90 steps on the same rows (both question sets'
# answers of -sd4's model + the code rows), with SAT blocks only where serving drafts (--sat-blocks drafted) and
# each make-data row cut to its prompt + the first 64 tokens of its answer (--max-answer-tokens 64: the openings
# the norepeat benchmark drafts, where the SATs agreed least; benchmarks/results/README.md 32.2, 33). Held-out rows
# are cut alike, so the run's own eval measures the openings. --std-target init keeps -sd7's served model.
# 2 threads on the 2-core dev CPU (AMD EPYC), jemalloc preloaded as for -sd7:
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:30000,muzzy_decay_ms:30000
# 23:39-00:55 UTC (42-56 s a step; a fresh clone's CI install ran beside it at nice 19).
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd8 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 90 --lr 3e-4 --sat-lr 1.2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5-sd7 --shuffle-seed 4 --std-target init \
  --sat-blocks drafted --max-answer-tokens 64 \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz \
            data/smollm2-135m-self-distill.jsonl.gz \
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 45 --eval-batches 16 --save-every 10 --log-every 5 --threads 2 --max-minutes 75
