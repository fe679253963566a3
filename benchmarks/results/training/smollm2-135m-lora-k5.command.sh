# Session 1: the first 80 steps (1 thread, beside other jobs: ~30 s/step, 40 min)
.venv/bin/sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5 --mode lora --num-sat 5 \
  --lora-r 8 --lora-alpha 16 --lr 5e-4 --sat-lr 2e-3 --steps 80 --warmup-steps 10 --batch-size 4 \
  --blocks-per-seq 24 --seq-len 256 --max-train-tokens 1000000 --eval-every 20 --eval-batches 8 \
  --save-every 10 --log-every 5 --max-minutes 75 --threads 1 --dtype fp32
# Session 2: the same run resumed to 320 steps (steps/threads are resumable settings; the cosine
# schedule is recomputed for 320 steps, so the LR rose again at step 81): 2 threads, ~9 s/step, 42 min
.venv/bin/sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5 --mode lora --num-sat 5 \
  --lora-r 8 --lora-alpha 16 --lr 5e-4 --sat-lr 2e-3 --steps 320 --warmup-steps 10 --batch-size 4 \
  --blocks-per-seq 24 --seq-len 256 --max-train-tokens 1000000 --eval-every 20 --eval-batches 8 \
  --save-every 10 --log-every 5 --max-minutes 75 --threads 2 --dtype fp32
