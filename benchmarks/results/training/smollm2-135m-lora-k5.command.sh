.venv/bin/sdsat train --model smollm2-135m --output-dir runs/smollm2-135m-lora-k5 --mode lora --num-sat 5 \
  --lora-r 8 --lora-alpha 16 --lr 5e-4 --sat-lr 2e-3 --steps 80 --warmup-steps 10 --batch-size 4 \
  --blocks-per-seq 24 --seq-len 256 --max-train-tokens 1000000 --eval-every 20 --eval-batches 8 \
  --save-every 10 --log-every 5 --max-minutes 75 --threads 1 --dtype fp32
