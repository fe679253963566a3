"""Does the gated delta reach vLLM's drafts? Fixed policy n=3, greedy, the same 16 norepeat prompts, batch 1:
-sd4 (no gate), gated60 and gated300 (rows gate). Identical accept counts would mean the delta is not applied."""
import json, sys
from vllm import LLM, SamplingParams
from sdsat_vllm.adapters import resolve_model
from sdsat_vllm.bench import prompt_set, chat_formatter
from sdsat_vllm.vllm_plugin import shutdown_llm
from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

KW = dict(max_model_len=768, gpu_memory_utilization=0.3, dtype="float32", disable_log_stats=False, seed=0)
DS = "/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc/sdsat_datastore/datastore.safetensors"
def main():
    sd4 = str(resolve_model("smollm2-135m-sdsat"))
    prompts, stop = prompt_set("norepeat", 16, chat=chat_formatter(sd4))
    sp = SamplingParams(temperature=0, max_tokens=64, stop=stop)
    out = {}
    for name, path in [("sd4", sd4), ("gated60", "/work/runs/s35/gated60/model"), ("gated300", "/work/main/runs/gated-sd4-s36/model")]:
        spec = {"model": "sdsat", "num_speculative_tokens": 3, "sdsat_policy": "fixed", "sdsat_lookup": False}
        llm = LLM(model=path, speculative_config=spec, **KW)
        m0 = from_llm_metrics(llm.get_metrics(), draft_len=3)
        toks = [list(llm.generate([p], sp)[0].outputs[0].token_ids) for p in prompts]
        m = from_llm_metrics(llm.get_metrics(), draft_len=3) - m0
        shutdown_llm(llm)
        out[name] = {"tokens": sum(map(len, toks)), "metrics": m.describe(), "out": toks}
        print(name, out[name]["tokens"], out[name]["metrics"], flush=True)
    print("identical outputs", out["sd4"]["out"] == out["gated300"]["out"] == out["gated60"]["out"])
    json.dump({k: {kk: vv for kk, vv in v.items() if kk != "out"} for k, v in out.items()}, open("/work/runs/s36/gate_check.json", "w"), indent=1)

if __name__ == "__main__":
    main()
