"""The one metrics vocabulary (sdsat_vllm/metrics_vocabulary.py): each figure's definition on
hand-built counters, and the engine's `DecodeMetrics` and the plugin's `SpecDecodeSummary` giving
the same number under the same name when they count the same steps."""

from __future__ import annotations

import dataclasses

import pytest

from sdsat_vllm import metrics_vocabulary as mv
from sdsat_vllm.decoding.metrics import DecodeMetrics
from sdsat_vllm.vllm_plugin.metrics import SpecDecodeSummary, summary_from_steps

N = 3
# (real drafts offered, accepted) per decode step of a fused run: after a rejection the next step is SAT-only
STEPS = [(3, 1), (0, 0), (3, 3), (3, 0), (0, 0), (3, 2)]


def engine_metrics(steps, num_calls: int = 1) -> DecodeMetrics:
    """What the engine records for one call that decodes `steps` after its prefill."""
    m = DecodeMetrics(mode="fused", num_calls=num_calls)
    m.num_forwards = num_calls + len(steps)
    m.num_new_tokens = num_calls + sum(1 + a for _, a in steps)  # the prefill commits one token
    for offered, accepted in steps:
        m.num_drafts += 1  # a decode forward that carried drafts or a SAT tail
        m.record_verify(range(1, offered + 1), accepted)
    return m


def test_definitions_on_hand_built_counters():
    assert mv.acceptance_rate(6, 12) == 0.5 and mv.acceptance_rate(0, 0) == 0.0
    assert mv.mean_acceptance_length(6, 4) == 2.5 and mv.mean_acceptance_length(0, 0) == 1.0
    assert mv.acceptance_rate_per_pos([3, 2, 1], 6) == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert mv.acceptance_rate_per_pos([0, 0], 0) == [0.0, 0.0]
    assert mv.real_draft_mean_acceptance_length(6, 4) == 2.5 and mv.real_draft_mean_acceptance_length(0, 0) == 1.0
    assert mv.real_draft_mean_acceptance_length(6, None) is None
    # per position: its own denominator; a position never offered is 0.0, a missing counter list None
    assert mv.real_draft_acceptance_rate_per_pos([3, 1], [4, 2, 0]) == pytest.approx([0.75, 0.5, 0.0])
    assert mv.real_draft_acceptance_rate_per_pos([3, 1], None) is None
    assert mv.tokens_per_forward(12, 8) == 1.5 and mv.tokens_per_forward(0, 0) == 0.0
    assert mv.tokens_per_decode_forward(11, 7) == pytest.approx(11 / 7)
    assert mv.tokens_per_decode_forward(None, 7) is None and mv.tokens_per_decode_forward(11, None) is None


def test_fused_steps_the_two_acceptance_figures_differ():
    s = summary_from_steps(STEPS, draft_len=N)
    # vLLM's divides by every draft (6 steps, the 2 SAT-only ones included); the real-draft one by the 4
    # steps that offered a real draft at each position
    assert s.acceptance_rate_per_pos == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    assert s.real_draft_acceptance_rate_per_pos == pytest.approx([3 / 4, 2 / 4, 1 / 4])
    assert s.mean_acceptance_length == pytest.approx(1 + 6 / 6)
    assert s.real_draft_mean_acceptance_length == pytest.approx(1 + 6 / 4)
    assert s.acceptance_rate == pytest.approx(6 / 12)


def test_engine_and_vllm_counters_give_the_same_figures():
    m = engine_metrics(STEPS)
    s = dataclasses.replace(summary_from_steps(STEPS, draft_len=N), num_decoded_tokens=sum(1 + a for _, a in STEPS))
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos",
                 "num_draft_steps", "num_draft_steps_per_pos", "num_decoded_tokens", "num_decode_forwards"):
        assert getattr(m, name) == pytest.approx(getattr(s, name)), name
    fm, fs = m.figures(), s.figures()
    assert set(fm) == set(fs) == set(mv.FIGURES)
    for name in mv.FIGURES:
        assert fm[name] == pytest.approx(fs[name]), name
    # under SDSAT every decode step is a draft, so vLLM's mean acceptance length is tokens per decode forward
    assert m.mean_acceptance_length == pytest.approx(m.tokens_per_decode_forward)
    # τ counts the prefill forward and its token; the decode figure does not
    assert m.tokens_per_forward == pytest.approx((1 + 12) / (1 + 6)) != pytest.approx(m.tokens_per_decode_forward)
    d = m.to_dict()
    assert all(d[name] == fm[name] for name in mv.FIGURES) and d["tokens_per_forward"] == m.tokens_per_forward


def test_aggregated_engine_metrics_keep_the_definitions():
    total = DecodeMetrics.aggregate([engine_metrics(STEPS[:3]), engine_metrics(STEPS[3:])])
    s = summary_from_steps(STEPS, draft_len=N)
    assert total.num_calls == 2 and total.num_decode_forwards == len(STEPS)
    assert total.mean_acceptance_length == pytest.approx(s.mean_acceptance_length)
    assert total.real_draft_acceptance_rate_per_pos == pytest.approx(s.real_draft_acceptance_rate_per_pos)


def test_a_tree_offers_a_position_once_per_step():
    m = DecodeMetrics()
    m.record_verify([1, 1, 2, 2, 3], 2)  # two nodes at depths 1 and 2: offered once there, per step
    m.record_verify([1, 1], 0)
    assert m.num_draft_steps == 2 and m.num_draft_tokens == 7
    assert m.num_draft_steps_per_pos == [2, 1, 1] and m.num_accepted_tokens_per_pos == [1, 1]
    assert m.real_draft_acceptance_rate_per_pos == pytest.approx([0.5, 1.0, 0.0])


def test_no_name_left_with_two_meanings():
    """`tau` and a bare `acceptance_per_pos` meant different things in the two classes: both are gone,
    so a caller still using them fails loudly instead of reading the other definition."""
    for obj in (DecodeMetrics(), SpecDecodeSummary()):
        for old in ("tau", "acceptance_per_pos", "real_draft_acceptance_per_pos", "accepted_per_pos",
                    "num_real_draft_steps", "num_drafted_per_pos"):
            assert not hasattr(obj, old), (type(obj).__name__, old)
        assert all(hasattr(obj, name) for name in mv.FIGURES)
