"""The rows gate on 4 packed layers a layer (-g1) against 2 (-g1 retrained on the attention and MLP inputs, session 37):
SDSAT's default policy (adaptive, lookup, -sd4's datastore), greedy, batch 1, 16 norepeat prompts, 64 tokens, one
process, engines in the order A B B A. Per engine: wall time of the timed pass, tokens, decode forwards, ms a forward."""
import json, sys, time
from sdsat_vllm.adapters import resolve_model
from sdsat_vllm.bench import chat_formatter, engine_kwargs, prompt_set, run_vllm, git_state

DS = "/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc/sdsat_datastore/datastore.safetensors"


def main():
    from vllm import SamplingParams

    models = {"g1 (4 hooks a layer)": str(resolve_model("smollm2-135m-sdsat-g1")),
              "inputs only (2 hooks a layer)": sys.argv[1]}
    order = list(models) + list(models)[::-1]
    prompts, stop = prompt_set("norepeat", 16, chat=chat_formatter(models[order[0]]))
    sp = SamplingParams(temperature=0, max_tokens=64, stop=stop)
    spec = {"model": "sdsat", "num_speculative_tokens": 5, "sdsat_datastore": DS}
    out = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "git": git_state("."),
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    tokens = {}
    for name in order:
        er = run_vllm(models[name], spec, prompts, sp, engine_kw=engine_kwargs(max_model_len=768))
        r = er.runs[0]
        fw = r.spec.num_decode_forwards
        row = {"model": name, "wall_s": round(r.wall_s, 2), "tokens": r.tokens, "decode_forwards": fw,
               "ms_per_forward": round(1000 * r.wall_s / fw, 1) if fw else None,
               "tokens_per_forward": round(r.spec.num_decoded_tokens / fw, 3) if fw else None,
               "accepted": r.spec.num_accepted_tokens, "draft_tokens": r.spec.num_draft_tokens,
               "tok_per_s": round(r.tokens / r.wall_s, 2)}
        out["runs"].append(row)
        tokens.setdefault(name, r.token_ids)
        print(json.dumps(row), flush=True)
    out["identical_outputs"] = len({json.dumps(v) for v in tokens.values()}) == 1
    print("identical outputs", out["identical_outputs"])
    json.dump(out, open("/work/runs/s37/ab_gate.json", "w"), indent=1)


if __name__ == "__main__":
    main()
