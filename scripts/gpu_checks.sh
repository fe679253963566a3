#!/usr/bin/env bash
# Issue 10's GPU checks (and the SAT trainer's CUDA path) in one command, for the device machine (torch, triton, pytest; no vLLM, no
# network): the kernel tests on CUDA tensors (tests/kernels, including the FlashAttention path of
# tree mode with vLLM-shaped inputs) and the kernel benchmark against causal attention, in fp16 and
# bf16, head dims 64 and 128. Everything lands in $OUT (default /tmp/sdsat_gpu_checks): the logs,
# the GPU's name and the benchmark's JSON and markdown, ready for benchmarks/results/.
#
#   bash scripts/gpu_checks.sh            # on the GPU machine, from the repository root
#   bash scripts/gpu_checks.sh --dry-run  # here, on CPU: the same steps at smoke size under the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sdsat_gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

# the package without its dependencies (the machine already has torch and triton)
SITE=$(mktemp -d)
$PY -m pip install -q --no-deps --no-build-isolation --no-index --target "$SITE" . >"$OUT/install.log" 2>&1 \
  || { echo "install failed: $OUT/install.log"; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

rc=0
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  echo "dry run: CPU, Triton interpreter" | tee "$OUT/device.txt"
  $PY -m pytest -q -p no:cacheprovider tests/kernels/test_tree_attention_flash_path.py 2>&1 | tee "$OUT/tests_kernels.log" || rc=1
  $PY benchmarks/bench_tree_kernel.py --smoke --out "$OUT/tree_kernel_smoke.json" 2>&1 | tee "$OUT/bench_smoke.log" || rc=1
  exit $rc
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/device.txt"
$PY -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/tests_kernels.log" || rc=1
# SAT training on the GPU (issue 8's lever): train on CUDA in bf16, resume on the CPU, export
$PY -m pytest -q -p no:cacheprovider tests/training/test_trainer.py -k cuda 2>&1 | tee "$OUT/tests_training_cuda.log" || rc=1
for dtype in float16 bfloat16; do
  for hd in 64 128; do
    $PY benchmarks/bench_tree_kernel.py --dtype $dtype --head-dim $hd --out "$OUT/tree_kernel_gpu_${dtype}_d${hd}.json" \
      2>&1 | tee "$OUT/bench_${dtype}_d${hd}.log" || rc=1
  done
done
exit $rc
