#!/usr/bin/env bash
# The adapter smollm2-135m-lora-k5-sd7, session 31: the default adapter -sd4 continued on the served model's
# own answers (-sd4 merged: data/smollm2-135m-sdsat4-questions*.jsonl.gz, both built-in question sets, never
# trained on before) plus the code rows, with --std-target init: the standard positions keep the
# distribution of the model they started from (KL from a frozen copy of -sd4's model), so the served
# model stays -sd4's while the SATs learn its answers (benchmarks/results/README.md, 31).
# --threads 2 on the 2-core dev CPU (AMD EPYC, 65 GFLOPS in a 2-thread fp32 matmul: ~44 s a step, half the
# speed of the VM that trained -sd4), the machine otherwise quiet but for file edits; glibc's malloc spent
# half the CPU in the kernel here (top: 50% sy; its 100 MB+ tensors are mmapped and unmapped each time), so
# the run had jemalloc preloaded:
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:30000,muzzy_decay_ms:30000
# 16:57-18:23 UTC; the VM slowed to 57-73 s a step from step 80, so --max-minutes stopped it after step 89
# (evaluated and checkpointed); the same command with --steps 89 then exported it (no further step).
sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5-sd7 --mode lora --lora-r 8 --lora-alpha 16 \
  --num-sat 5 --blocks-per-seq 64 --batch-size 2 --grad-accum 2 --steps 90 --lr 3e-4 --sat-lr 1.2e-3 --warmup-steps 10 \
  --dtype fp32 --init-adapter sdsat_vllm/adapters/smollm2-135m-lora-k5-sd4 --shuffle-seed 3 --std-target init \
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz \
            data/smollm2-135m-self-distill.jsonl.gz \
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz \
  --eval-every 50 --eval-batches 16 --save-every 10 --log-every 5 --threads 2 --max-minutes 80
