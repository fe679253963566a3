"""Per-forward cost of the two gates on the real model: SDSAT, fixed policy (n=3 drafts + 3 SATs every step),
batch 1, 8 norepeat prompts (chat template) x 64 tokens, greedy, no stop strings. -sd4 merged (no gate) vs the
gated-on-sd4 adapter of 3 CPU steps (/work/runs/s35/gated-e2e: its drafts ~ -sd4's) through gate rows and gate
lora, in the order A B C A B (drift check). Time per decode forward = wall / decode forwards (vLLM's counters)."""
import json, sys, time

def main():
    from vllm import LLM, SamplingParams
    from sdsat_vllm.adapters import resolve_model
    from sdsat_vllm.bench import chat_formatter, engine_kwargs, git_state, prompt_set
    from sdsat_vllm.vllm_plugin import shutdown_llm
    from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

    sd4 = str(resolve_model("smollm2-135m-sdsat"))
    gated = "/work/runs/s35/gated-e2e/model"
    prompts, _ = prompt_set("norepeat", 8, chat=chat_formatter(sd4))
    sp = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    fixed = {"model": "sdsat", "num_speculative_tokens": 3, "sdsat_policy": "fixed"}
    runs = [("sd4", sd4, fixed), ("gated-rows", gated, {**fixed, "sdsat_gate": "rows"}),
            ("gated-lora", gated, {**fixed, "sdsat_gate": "lora"}), ("sd4", sd4, fixed),
            ("gated-rows", gated, {**fixed, "sdsat_gate": "rows"})]
    out, ref = [], None
    for name, model, spec in runs:
        llm = LLM(model=model, speculative_config=spec, **engine_kwargs(max_model_len=1024))
        llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)  # warm-up
        m0 = from_llm_metrics(llm.get_metrics(), draft_len=3)
        t = time.perf_counter()
        ids = [list(llm.generate([p], sp, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts]
        wall = time.perf_counter() - t
        m = from_llm_metrics(llm.get_metrics(), draft_len=3) - m0
        shutdown_llm(llm)
        ref = ref or ids
        tokens = sum(map(len, ids))
        fw = m.num_decode_forwards
        row = dict(engine=name, tokens=tokens, wall_s=wall, tokens_per_s=tokens / wall, decode_forwards=fw,
                   tokens_per_forward=tokens / fw if fw else None, ms_per_forward=1000 * wall / fw if fw else None,
                   identical_to_first=ids == ref, metrics=m.describe())
        print(json.dumps(row), flush=True)
        out.append(row)
    json.dump({"git": git_state(), "runs": out},
              open(sys.argv[1], "w"), indent=1)

if __name__ == "__main__":
    main()
