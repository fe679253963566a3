"""Fast tests of the metrics helper: the vocabulary's figures from vLLM's counters (mean acceptance
length, the two acceptance-rate-per-position figures, tokens per decode forward), from a hand-built
sequence of verify forwards (no vLLM engine, no torch)."""

import dataclasses
from types import SimpleNamespace

import pytest

from sdsat_vllm.vllm_plugin.metrics import SpecDecodeSummary, from_llm_metrics, from_prometheus, summary_from_steps

N = 5
# (real drafts offered, accepted) per decode forward, fused mode: SAT-only forwards offer 0
STEPS = [(5, 2), (0, 0), (5, 5), (5, 0), (0, 0)]


def test_counters_from_steps():
    s = summary_from_steps(STEPS, draft_len=N)
    assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == (5, 15, 7)
    assert s.num_accepted_tokens_per_pos == [2, 2, 1, 1, 1]  # steps with >= i+1 accepted


def test_mean_acceptance_length_and_both_acceptance_figures():
    s = summary_from_steps(STEPS, draft_len=N)
    # every forward commits 1 + accepted tokens, and under SDSAT every decode forward is a draft
    assert s.mean_acceptance_length == pytest.approx(sum(1 + a for _, a in STEPS) / len(STEPS)) == pytest.approx(2.4)
    assert s.acceptance_rate == pytest.approx(7 / 15)
    # real drafts: 3 steps offered a draft at every position; 2 of them accepted positions 0-1, 1 all
    assert s.num_draft_steps == 3 and s.num_draft_steps_per_pos == [3] * N
    assert s.real_draft_acceptance_rate_per_pos == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert s.real_draft_mean_acceptance_length == pytest.approx(1 + 7 / 3)
    # vLLM's per-position figure divides by all 5 forwards, the SAT-only ones included
    assert s.acceptance_rate_per_pos == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.2])
    assert s.acceptance_rate_per_pos != pytest.approx(s.real_draft_acceptance_rate_per_pos)
    # the decoded tokens are not in vLLM's counters
    assert s.num_decoded_tokens is None and s.tokens_per_decode_forward is None
    d = s.to_dict()
    assert d["real_draft_acceptance_rate_per_pos"] == s.real_draft_acceptance_rate_per_pos
    assert d["acceptance_rate_per_pos"] == s.acceptance_rate_per_pos and d["draft_len"] == N
    assert d["mean_acceptance_length"] == s.mean_acceptance_length and "tau" not in d
    assert "real drafts [0.67, 0.67, 0.33, 0.33, 0.33]" in s.describe()
    assert "per draft (vLLM) [0.40, 0.40, 0.20, 0.20, 0.20]" in s.describe()


def test_tokens_per_decode_forward_from_the_decoded_tokens():
    s = dataclasses.replace(summary_from_steps(STEPS, draft_len=N), num_decoded_tokens=sum(1 + a for _, a in STEPS))
    assert s.num_decode_forwards == len(STEPS)
    assert s.tokens_per_decode_forward == pytest.approx(s.mean_acceptance_length)
    # a stop string cut 2 accepted tokens from the output: the counters still hold them
    cut = dataclasses.replace(s, num_decoded_tokens=s.num_decoded_tokens - 2)
    assert cut.num_decode_forwards == len(STEPS) - 2 and cut.tokens_per_decode_forward == pytest.approx(10 / 3)
    # subtraction keeps it only when both sides know it
    assert (s - summary_from_steps(STEPS[:2], draft_len=N)).num_decoded_tokens is None
    half = dataclasses.replace(summary_from_steps(STEPS[:2], draft_len=N), num_decoded_tokens=4)
    assert (s - half).num_decoded_tokens == s.num_decoded_tokens - 4


def test_without_sat_only_forwards_the_figures_agree():
    s = summary_from_steps([(3, 1), (3, 3), (3, 0)], draft_len=3)
    assert s.real_draft_acceptance_rate_per_pos == pytest.approx(s.acceptance_rate_per_pos)
    assert s.real_draft_mean_acceptance_length == pytest.approx(s.mean_acceptance_length)


def test_no_draft_len_no_real_draft_figure():
    s = summary_from_steps([(4, 1), (2, 2), (1, 0)])  # ngram-like: drafts of variable length
    assert s.num_draft_steps is None and s.real_draft_acceptance_rate_per_pos is None
    assert s.real_draft_mean_acceptance_length is None
    assert s.acceptance_rate_per_pos == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert "real drafts -" in s.describe()
    with pytest.raises(ValueError):
        summary_from_steps([(1, 2)])


def test_subtraction_keeps_draft_len():
    before = summary_from_steps(STEPS[:2], draft_len=N)
    after = summary_from_steps(STEPS, draft_len=N)
    d = after - before
    assert d == summary_from_steps(STEPS[2:], draft_len=N)
    assert d.draft_len == N
    # a snapshot read without draft_len takes the other side's
    assert (after - SpecDecodeSummary()).draft_len == N
    assert (SpecDecodeSummary(draft_len=N) - SpecDecodeSummary()).draft_len == N
    with pytest.raises(ValueError):
        after - SpecDecodeSummary(draft_len=N - 1)


def test_from_llm_metrics():
    metrics = [SimpleNamespace(name="vllm:spec_decode_num_drafts", value=5),
               SimpleNamespace(name="vllm:spec_decode_num_draft_tokens", value=15),
               SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens", value=7),
               SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=[2, 2, 1, 1, 1]),
               SimpleNamespace(name="vllm:num_requests_running", value=0)]
    assert from_llm_metrics(metrics, draft_len=N) == summary_from_steps(STEPS, draft_len=N)
    assert from_llm_metrics(metrics).draft_len is None


def test_from_prometheus():
    text = """
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 5.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 15.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 7.0
""" + "".join(f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="m",position="{i}"}} {v}.0\n'
              for i, v in enumerate([2, 2, 1, 1, 1]))
    s = from_prometheus(text, draft_len=N)
    assert s == summary_from_steps(STEPS, draft_len=N)
    assert s.real_draft_acceptance_rate_per_pos == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
