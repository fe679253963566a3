"""The step's drafts reach vLLM's scheduler with the step's output (patches draft_ids_with_output and
executor_drafts_from_output), in vLLM's default engine: engine core and worker in their own processes,
where post_step's take_draft_token_ids was a second round trip to the worker every step."""

import pytest
from vllm_plugin_helpers import ENGINE_KW, FIXED, VLLM_AVAILABLE, greedy_batch, shutdown, spec_summary

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]


def test_drafts_reach_the_scheduler_without_a_round_trip(sdsat_model_dir, plain_baseline, monkeypatch):
    """A counter on the worker's take_draft_token_ids (the method the engine core's RPC calls by
    name) stays at 0 over a whole batch that drafted every step, with outputs identical to plain
    decoding and drafts accepted (the drafts the scheduler got are this step's, not stale ones:
    stale drafts would be rejected). Positive control: the RPC itself moves the counter."""
    from vllm import LLM

    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # lets collective_rpc ship the functions below

    def count_draft_rpcs(worker):
        take = worker.take_draft_token_ids

        def counted(*args, **kwargs):
            counted.calls += 1
            return take(*args, **kwargs)

        counted.calls = 0
        worker.take_draft_token_ids = counted  # found before the wrapped worker's method by the RPC's getattr

    def draft_rpcs(worker):
        return worker.take_draft_token_ids.calls

    llm = LLM(model=str(sdsat_model_dir), speculative_config=FIXED, **ENGINE_KW)
    try:
        llm.collective_rpc(count_draft_rpcs)
        before = spec_summary(llm)
        assert greedy_batch(llm) == plain_baseline["mixed"]
        d = spec_summary(llm) - before
        assert d.num_drafts > 10 and d.num_accepted_tokens > 0
        assert llm.collective_rpc(draft_rpcs) == [0]
        assert llm.collective_rpc("take_draft_token_ids")[0] is not None
        assert llm.collective_rpc(draft_rpcs) == [1]
    finally:
        shutdown(llm)
