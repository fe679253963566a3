"""Real model: the gated adapter trained on top of smollm2-135m-sdsat (3 steps, /work/runs/s35/gated-e2e)
served through vLLM with SDSAT (fixed policy, n=4, and the default adaptive policy) gives plain vLLM
decoding of smollm2-135m-sdsat token for token, greedy, batch 1 and 8.

    python gated_on_sd4_vllm_check.session35.py GATED_MODEL_DIR [GATE]   # GATE: lora (as first run, ce6cf24), rows, auto"""
import json, sys, time
from vllm import LLM, SamplingParams
from sdsat_vllm.adapters import resolve_model
from sdsat_vllm.vllm_plugin import shutdown_llm
from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

KW = dict(max_model_len=768, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float32", disable_log_stats=False, seed=0)
prompts = ["def fibonacci(n):\n", "The capital of France is", "Write a short story about a robot who learns to paint.",
           "import numpy as np\n\ndef normalize(x):\n", "Explain why the sky is blue in two sentences.",
           "class Stack:\n    def __init__(self):\n", "List three uses of copper:", "Once upon a time,"]
def main():
    sp = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    sat_dir = str(resolve_model("smollm2-135m-sdsat"))
    gated_dir = sys.argv[1]
    gate = sys.argv[2] if len(sys.argv) > 2 else "lora"
    out = {}
    llm = LLM(model=sat_dir, **KW)
    plain = [list(r.outputs[0].token_ids) for r in llm.generate(prompts, sp)]
    shutdown_llm(llm)
    for name, spec in [("fixed_n4", {"model": "sdsat", "num_speculative_tokens": 4, "sdsat_policy": "fixed"}),
                       ("default", {"model": "sdsat", "num_speculative_tokens": 5})]:
        llm = LLM(model=gated_dir, speculative_config={**spec, "sdsat_gate": gate} if gate != "auto" else spec, **KW)
        assert (llm.llm_engine.vllm_config.lora_config is not None) == (gate == "lora")
        m0 = from_llm_metrics(llm.get_metrics(), draft_len=4 if name == "fixed_n4" else 5)
        one = [list(llm.generate([p], sp)[0].outputs[0].token_ids) for p in prompts]
        batch = [list(r.outputs[0].token_ids) for r in llm.generate(prompts, sp)]
        m = from_llm_metrics(llm.get_metrics(), draft_len=4 if name == "fixed_n4" else 5) - m0
        shutdown_llm(llm)
        out[name] = {"batch1_identical": one == plain, "batch8_identical": batch == plain,
                     "sat_emitted": any(49152 in o for o in one + batch), "metrics": m.describe()}
        print(name, out[name], flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
