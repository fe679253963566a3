"""Fast tests: the proposer's per-row rule, the short-form resolution and the metrics maths,
with hand-built inputs (no vLLM engine, no torch model)."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from sdsat_vllm.vllm_plugin import PROPOSER_PATH
from sdsat_vllm.vllm_plugin.metrics import SpecDecodeSummary, from_prometheus
from sdsat_vllm.vllm_plugin.patches import resolve_short_form
from sdsat_vllm.vllm_plugin.lookup import lookup_prior_q
from sdsat_vllm.vllm_plugin.proposer import (count_trailing_sats, decode_only, lookup_chains, plan_drafts,
                                             sat_input_rows, tokens_left)

S = 900  # a SAT id
SATS = [S, S, S]


def rows_of(num_draft):
    """cu_num_sampled_tokens for per-row draft counts (each row has num_draft + 1 logits rows)."""
    cu, c = [], 0
    for n in num_draft:
        c += n + 1
        cu.append(c)
    return cu


def test_prefill_and_first_decode_get_sat_only_step():
    plan = plan_drafts([[11], [12]], [[], []], None, None, SATS, 3)
    assert plan.fill([], SATS[:3]) == [[S, S, S], [S, S, S]]
    assert plan.gather == []


def test_partial_prefill_row_gets_nothing():
    plan = plan_drafts([[], [12]], [[], []], None, None, SATS, 3)
    assert plan.fill([], SATS) == [[], [S, S, S]]


def test_sat_only_step_drafts_from_its_sat_rows():
    # verified [y, S, S, S]: S_1 rejected, recovered token z committed -> SAT rows give the drafts
    nd = [3]
    plan = plan_drafts([[7]], [[S, S, S]], nd, rows_of(nd), SATS, 3)
    assert plan.gather == [1, 2, 3]                      # rows: [y]=0, S_1=1, S_2=2, S_3=3
    assert plan.fill([21, 22, 23], SATS) == [[21, 22, 23, S, S, S]]


def test_full_acceptance_uses_sat_rows_of_same_forward():
    nd = [6]
    plan = plan_drafts([[1, 2, 3, 4]], [[1, 2, 3, S, S, S]], nd, rows_of(nd), SATS, 3)
    assert plan.gather == [4, 5, 6]
    assert plan.fill([31, 32, 33], SATS) == [[31, 32, 33, S, S, S]]


def test_partial_acceptance_falls_back_to_sat_only_step():
    nd = [6]
    plan = plan_drafts([[1, 9]], [[1, 2, 3, S, S, S]], nd, rows_of(nd), SATS, 3)
    assert plan.gather == [] and plan.fill([], SATS) == [[S, S, S]]


def test_no_draft_accepted_falls_back():
    nd = [6]
    plan = plan_drafts([[9]], [[1, 2, 3, S, S, S]], nd, rows_of(nd), SATS, 3)
    assert plan.fill([], SATS) == [[S, S, S]]


def test_tail_truncated_by_scheduler_uses_rows_that_exist():
    nd = [4]  # [d1 d2 d3 S_1]: budget / max_model_len cut the tail to one SAT
    plan = plan_drafts([[1, 2, 3, 4]], [[1, 2, 3, S]], nd, rows_of(nd), SATS, 3)
    assert plan.gather == [4]
    assert plan.fill([41], SATS) == [[41, S, S, S]]


def test_tail_cut_entirely_falls_back():
    nd = [2]
    plan = plan_drafts([[1, 2, 5]], [[1, 2]], nd, rows_of(nd), SATS, 3)
    assert plan.fill([], SATS) == [[S, S, S]]


def test_runner_disagreement_falls_back():
    plan = plan_drafts([[1, 2, 3, 4]], [[1, 2, 3, S, S, S]], [5], [6], SATS, 3)
    assert plan.gather == []


def test_mixed_batch_row_offsets():
    verified = [[1, 2, 3, S, S, S], [S, S, S], [], [4, 5, 6, S, S, S], [S, S, S]]
    sampled = [[1, 2, 3, 9], [8], [7], [4, 0], []]
    nd = [len(v) for v in verified]
    cu = rows_of(nd)                                    # [7, 11, 12, 19, 23]
    plan = plan_drafts(sampled, verified, nd, cu, SATS, 3)
    assert plan.gather == [4, 5, 6, 8, 9, 10]
    top = [100, 101, 102, 200, 201, 202]
    assert plan.fill(top, SATS) == [[100, 101, 102, S, S, S], [200, 201, 202, S, S, S], [S, S, S], [S, S, S], []]


def test_fewer_drafts_than_trained_sats():
    sats = [S, S, S, S, S]                                # K = 5, n = 2: tail of 2 SATs
    nd = [4]
    plan = plan_drafts([[1, 2, 3]], [[1, 2, S, S]], nd, rows_of(nd), sats, 2)
    assert plan.gather == [3, 4]
    assert plan.fill([7, 8], sats[:2]) == [[7, 8, S, S]]


def test_distinct_sat_ids():
    sats = [900, 901, 902]
    nd = [5]
    plan = plan_drafts([[1, 2, 3]], [[1, 2, 900, 901, 902]], nd, rows_of(nd), sats, 3)
    assert plan.gather == [3, 4, 5]
    assert count_trailing_sats([1, 900, 902], set(sats)) == 2


def test_real_drafts_never_count_as_sats():
    assert count_trailing_sats([1, 2, 3], {S}) == 0
    assert count_trailing_sats([], {S}) == 0


# ---------------------------------------------------------------- per-row drafts and tails (adaptive policy)


def test_rows_with_their_own_draft_and_tail_lengths():
    # m=2 drafts + t=1 SAT; m=1 + t=3; m=2, no tail; m=0, t=0 (a plain step); m=0, t=2 (SAT-only)
    verified = [[1, 2, S], [4, S, S, S], [5, 6], [], [S, S]]
    sampled = [[1, 2, 9], [4, 8], [5, 6, 7], [3], [2]]
    nd = [len(v) for v in verified]
    cu = rows_of(nd)                                        # [4, 9, 12, 13, 16]
    plan = plan_drafts(sampled, verified, nd, cu, SATS, 3)
    assert plan.gather == [3, 6, 7, 8, 14, 15]
    assert [plan.fresh(r) for r in range(5)] == [(0, 1), (1, 3), (0, 0), (0, 0), (4, 2)]
    top = [10, 20, 21, 22, 30, 31]
    assert plan.fill(top, SATS) == [[10, S, S, S], [20, 21, 22, S, S, S], [S, S, S], [S, S, S], [30, 31, S, S, S]]
    # the policy's (m, t) per row: m never exceeds the fresh drafts, t SATs whatever m
    counts = [(1, 0), (2, 3), (0, 1), (0, 0), (5, 2)]
    assert plan.fill(top, SATS, counts) == [[10], [20, 21, S, S, S], [S], [], [30, 31, S, S]]


def test_fill_with_a_lookup_chain():
    verified = [[1, 2, S, S], [S, S, S], [4]]
    sampled = [[1, 2, 9], [8], [5]]
    nd = [len(v) for v in verified]
    plan = plan_drafts(sampled, verified, nd, rows_of(nd), SATS, 3)
    top = [10, 11, 20, 21, 22]
    # row 0 drafts 3 lookup tokens instead of its 2 fresh SAT drafts; row 2 (no fresh rows) 2 of them
    out = plan.fill(top, SATS, [(3, 1), (2, 3), (2, 0)], {0: [70, 71, 72, 73], 2: [80, 81, 82]})
    assert out == [[70, 71, 72, S], [20, 21, S, S, S], [80, 81]]


def test_fill_counts_leave_rows_that_sampled_nothing_empty():
    plan = plan_drafts([[], [12]], [[], []], None, None, SATS, 3)
    assert plan.fill([], SATS, [None, (0, 2)]) == [[], [S, S]]
    assert plan.fill([], SATS, [(0, 3), None]) == [[], [S, S, S]]


def test_a_draft_rejected_without_tail():
    nd = [2]
    plan = plan_drafts([[1, 9]], [[1, 2]], nd, rows_of(nd), SATS, 3)
    assert plan.gather == [] and plan.fresh(0) == (0, 0)


def _adaptive_proposer(n=3, lookup=True):
    """An SDSATProposer with just what its adaptive path reads (no vLLM engine)."""
    from sdsat_vllm.vllm_plugin.cost_model import CostModel
    from sdsat_vllm.vllm_plugin.policy import AdaptiveDrafter, RecentBatch
    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    p = SDSATProposer.__new__(SDSATProposer)
    p.n, p.sat_ids, p.tail, p.tree, p.adaptive, p.lookup = n, SATS[:n], SATS[:n], False, True, lookup
    p.datastore = p.responses = None
    p.model, p.dynamic_schedule, p._last_step_start, p._logits_at = object(), True, None, None
    p._last_hidden = p._last_argmax = p._last_q = p._last_lse = p._last_logits = p._last_rows = None
    p.step_has_drafts, p._step_sat_rows, p._step_num_rows, p._sat_ids_on = True, None, None, {}
    p.drafter = AdaptiveDrafter(n, n, CostModel.linear(0.075), online=False)
    p._recent_batch = RecentBatch()
    return p


def _input_batch(texts):
    import numpy as np

    width = max(map(len, texts))
    tokens = np.zeros((len(texts), width), dtype=np.int64)
    for i, t in enumerate(texts):
        tokens[i, : len(t)] = t
    return SimpleNamespace(req_ids=[f"r{i}" for i in range(len(texts))], spec_token_ids=[[] for _ in texts],
                           num_tokens_no_spec=[len(t) for t in texts], token_ids_cpu=tokens)


def _verify_step(drafts):
    """vLLM's SpecDecodeMetadata fields the proposer reads, for per-request draft lists: each
    request's rows are [last token, its drafts], draft k verified by the row before it."""
    import torch

    flat, target, cu, row = [], [], [], 0
    for d in drafts:
        flat += d
        target += list(range(row, row + len(d)))
        row += len(d) + 1
        cu.append(row)
    return SimpleNamespace(draft_token_ids=torch.tensor(flat, dtype=torch.int32),
                           target_logits_indices=torch.tensor(target, dtype=torch.int32),
                           logits_indices=torch.zeros(row, dtype=torch.int32),
                           num_draft_tokens=[len(d) for d in drafts]), cu


def test_sat_input_rows_are_the_rows_after_each_sat_drafts_target():
    import torch

    meta, _ = _verify_step([[S, S, S], [4, 5, S, S], [], [6]])
    # rows: r0 [y]=0 S=1 S=2 S=3 | r1 [y]=4 4=5 5=6 S=7 S=8 | r2 [y]=9 | r3 [y]=10 6=11
    assert sat_input_rows(meta.draft_token_ids, meta.target_logits_indices,
                          torch.tensor([S], dtype=torch.int32)).tolist() == [1, 2, 3, 7, 8]


def test_observer_reads_the_sat_rows_only_and_gathers_what_the_full_logits_give():
    """note_step + _observe_logits keep the SAT rows' argmax, max probability and log-probabilities
    only; _gathered then gives exactly what the full logits give for the plan's rows. A gather row
    without a SAT input (a layout the observer did not see) recomputes from the hidden states
    instead of reading a wrong row."""
    import torch

    p = _adaptive_proposer(n=2)
    drafts = [[S, S], [3, S, S], [7]]
    meta, cu = _verify_step(drafts)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(meta.logits_indices.shape[0], 50, generator=g) * 3
    hidden = object()
    p.note_step(meta)
    p._observe_logits(hidden, logits.clone())
    assert p._last_rows.tolist() == [1, 2, 5, 6] and p._last_logits.shape == (4, 50)
    # r0: its first SAT rejected, 7 recovered (SAT-only step); r1: draft 3 accepted, 9 at the first SAT
    plan = plan_drafts([[7], [3, 9]], drafts[:2], [2, 3], cu[:2], SATS[:2], 2)
    assert plan.gather == [1, 2, 5, 6]
    top, q, logprobs = p._gathered(plan, hidden)
    full = torch.log_softmax(logits, dim=-1)[plan.gather]
    assert top == full.argmax(-1).tolist()
    assert torch.allclose(torch.tensor(q), full.amax(-1).exp(), atol=1e-6)
    assert torch.allclose(logprobs, full, atol=1e-5)

    recomputed = []
    p.model = SimpleNamespace(compute_logits=lambda h: recomputed.append(h.shape[0]) or h)
    p.note_step(meta)
    p._observe_logits(hidden, logits.clone())
    stale = SimpleNamespace(gather=[4, 5])  # row 4 has a real draft (3) as input
    rows = torch.randn(meta.logits_indices.shape[0], 50, generator=g)
    top, _, _ = p._gathered(stale, rows)
    assert recomputed == [2] and top == rows[[4, 5]].argmax(-1).tolist()
    p.note_step(None)  # a step without drafts: nothing kept
    p._observe_logits(hidden, logits.clone())
    assert p._last_argmax is None and p._last_rows is None


def test_proposer_sizes_decisions_by_the_whole_batch_and_skips_idle_requests(monkeypatch):
    """The adaptive path through the proposer (hand-built batch, no engine): decisions are sized for
    every request of the persistent batch, those still in a chunked prefill too (1 sampled, 63
    prefilling: batch 64, so the new request starts in back-off instead of probing); a request in
    back-off with no fresh row and no probe due skips decide; with vLLM's per-batch-size count at 0
    the proposer sends nothing and asks the policy nothing."""
    p = _adaptive_proposer()
    seen, real = [], p.drafter.decide
    monkeypatch.setattr(p.drafter, "decide", lambda r, q, **kw: seen.append((r, kw["batch_size"])) or real(r, q, **kw))
    texts = [[1, 2, 3, 4, 5, 6, 7]] * 64
    sampled = [[7]] + [[] for _ in range(63)]

    def step(sampled, num_spec=3):
        return p.sdsat_propose_with_context(_input_batch(texts), sampled, None, None,
                                            SimpleNamespace(num_spec_tokens_to_schedule=num_spec,
                                                            num_scheduled_tokens={}, scheduled_spec_decode_tokens={},
                                                            total_num_scheduled_tokens=64))

    assert step(sampled) == [[]] * 64  # batch 64 on this CPU: back-off from the start, no probe
    assert seen == [("r0", 64)]
    seen.clear()
    everyone = [[9]] * 64
    out = step(everyone)
    # r0 is idle (in back-off, nothing to read, no probe due): no decide; the 63 new ones decide once
    assert out == [[]] * 64 and len(seen) == 63 and "r0" not in {r for r, _ in seen}
    seen.clear()
    assert step(everyone) == [[]] * 64 and seen == []  # all idle now
    # vLLM's dynamic speculative decoding says 0 at this batch size: nothing proposed, nothing decided
    monkeypatch.setattr(p.drafter, "idle", lambda *a, **k: pytest.fail("the policy was asked at cap 0"))
    assert step(everyone, num_spec=0) == [[]] * 64 and seen == []


def test_a_slot_left_empty_for_a_step_does_not_make_the_batch_decide_afresh(monkeypatch):
    """Under load a finished request's slot stays empty for a step or two: the batch goes 64, 63, 64
    (rungs 64 and 58). Decisions are sized for the largest batch of the last steps, so the requests in
    back-off stay idle through the dip, their steady state not even looked at, and only the new request
    decides; control: sized for each step's own batch, all 63 have their steady state evaluated at the
    new rung on the dip and again when it ends (the idle shortcut then holds where it is still plain
    decoding, results 42; before that, they all decided)."""
    from sdsat_vllm.vllm_plugin.policy import RecentBatch

    def run(window: int) -> tuple[list[int], list[int]]:
        p = _adaptive_proposer()
        p._recent_batch = RecentBatch(window)
        seen, real = [], p.drafter.decide
        monkeypatch.setattr(p.drafter, "decide", lambda r, q, **kw: seen.append(r) or real(r, q, **kw))
        evaluated, real_steady = [], p.drafter._steady
        monkeypatch.setattr(p.drafter, "_steady", lambda *a: evaluated.append(1) or real_steady(*a))
        monkeypatch.setattr(p.drafter, "lookup_may_pay", lambda *a, **k: False)
        texts = [[1, 2, 3, 4, 5, 6, 7]] * 64
        decided, steady = [], []

        def step(live, sampled):
            seen.clear()
            evaluated.clear()
            batch = _input_batch([texts[0]] * len(live))
            batch.req_ids = live
            p.sdsat_propose_with_context(batch, sampled, None, None,
                                         SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={},
                                                         scheduled_spec_decode_tokens={},
                                                         total_num_scheduled_tokens=len(live)))
            decided.append(len(seen))
            steady.append(len(evaluated))

        full = [f"r{i}" for i in range(64)]
        step(full, [[9]] * 64)                      # every request new: each decides once
        step(full, [[9]] * 64)                      # all idle
        dip = full[1:]                              # r0 finished; its slot is empty this step
        step(dip, [[9]] * 63)
        step(dip + ["new"], [[9]] * 63 + [[]])      # a new request prefills in the slot
        step(dip + ["new"], [[9]] * 64)
        return decided, steady

    decided, steady = run(8)
    assert decided == [64, 0, 0, 0, 1] and steady[1:4] == [0, 0, 0]
    decided, steady = run(1)
    assert decided == [64, 0, 0, 0, 1] and steady[1:4] == [0, 63, 63]


def test_recent_batch_is_the_largest_of_the_last_steps():
    from sdsat_vllm.vllm_plugin.policy import RecentBatch

    rb = RecentBatch(3)
    assert [rb(b) for b in (64, 63, 64, 62, 40, 40, 40, 41)] == [64, 64, 64, 64, 64, 62, 40, 41]
    with pytest.raises(ValueError, match="window"):
        RecentBatch(0)


def test_proposer_times_each_decode_steps_sampling_half(monkeypatch):
    """observe_step gets, besides the step-to-step time, the part from the step's compute_logits call
    (the observer) to the proposal: the sampling half, where vLLM's speculative path costs what the
    plain one does not. None when no compute_logits call came within the step."""
    from sdsat_vllm.vllm_plugin import proposer as P

    p = _adaptive_proposer()
    clock = [100.0]
    monkeypatch.setattr(P, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    seen = []
    monkeypatch.setattr(p.drafter, "observe_step", lambda n, s, **kw: seen.append((n, round(s, 6), kw)))
    texts = [[1, 2, 3, 4, 5, 6, 7]] * 2
    decode = SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={"r0": 1, "r1": 1},
                             scheduled_spec_decode_tokens={}, total_num_scheduled_tokens=2)

    def step(forward_s, sample_s, logits=True):
        clock[0] += forward_s
        if logits:
            p.note_step(None)
            p._observe_logits(object(), None)  # a step without drafts: the observer only notes the time
        clock[0] += sample_s
        p.sdsat_propose_with_context(_input_batch(texts), [[9], [9]], None, None, decode)

    step(0.050, 0.004)
    assert seen == []  # the first step: no step before it to time from
    step(0.050, 0.004)
    assert seen == [(2, 0.054, {"speculative": False, "sampling": pytest.approx(0.004), "requests": 2})]
    step(0.050, 0.003, logits=False)  # the last compute_logits call was the previous step's
    assert seen[-1][2]["sampling"] is None


def test_proposer_skips_suffix_matches_that_cannot_pay_under_load(monkeypatch):
    """Batch 64, every request in back-off, a lookup calibration that lets lookups be tried
    (lookup_may_pay): a request whose text has no match now cannot have one that pays (6 tokens at
    this batch size on this CPU) before 6 more tokens, so it is looked up on one step in 6, not on every
    step (one lookup of whole chains, its first tokens deciding). Control: with the skip turned off, 64
    lookups every step."""
    from sdsat_vllm.vllm_plugin import proposer as P

    def run(skip: bool) -> list[int]:
        p = _adaptive_proposer()
        monkeypatch.setattr(p.drafter, "lookup_may_pay", lambda *a, **k: True)
        if not skip:
            monkeypatch.setattr(p.drafter, "lookup_due", lambda *a, **k: True)
        calls, real = [], P.lookup_chains
        monkeypatch.setattr(P, "lookup_chains", lambda *a, **k: calls.append(a[5]) or real(*a, **k))
        texts = [[1, 2, 3, 4, 5, 6, 100 + i] for i in range(64)]  # the last token is new: no match
        per_step = []
        for _ in range(13):
            calls.clear()
            out = p.sdsat_propose_with_context(_input_batch(texts), [[9]] * 64, None, None,
                                               SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={},
                                                               scheduled_spec_decode_tokens={},
                                                               total_num_scheduled_tokens=64))
            assert out == [[]] * 64 and set(calls) <= {3}  # whole chains (cap 3), never first tokens alone
            per_step.append(len(calls))
        return per_step

    # the first step decides (no request is in back-off yet), then back-off
    assert run(skip=True) == [64, 64] + [0] * 5 + [64] + [0] * 5
    assert run(skip=False) == [64] * 13


def test_proposer_reports_lookups_in_back_off_and_the_ledger_spaces_them_out(monkeypatch):
    """The proposer tells the drafter, once a step, how many requests in back-off it looked up and how
    long that took (the LookupLedger's input): the 64 lookups of the test above, 0 on the
    steps they are skipped. With the ledger's verdict that lookups at this batch size do not pay
    (stride STRIDE_OFF), a request that found nothing waits STRIDE_OFF times longer."""
    from sdsat_vllm.vllm_plugin.cost_model import CostModel
    from sdsat_vllm.vllm_plugin.lookup import LookupLedger
    from sdsat_vllm.vllm_plugin.policy import AdaptiveDrafter, RecentBatch

    def run(stride: int) -> list[int]:
        p = _adaptive_proposer()
        p.drafter = AdaptiveDrafter(3, 3, CostModel.linear(0.075), online=True)  # the ledger needs the online cost
        p._recent_batch = RecentBatch()
        p.drafter.ledger(64).stride = stride
        monkeypatch.setattr(p.drafter, "lookup_may_pay", lambda *a, **k: True)
        noted, real = [], p.drafter.note_lookups
        monkeypatch.setattr(p.drafter, "note_lookups",
                            lambda n, sec, worth, b: noted.append((n, sec > 0, b, worth)) or real(n, sec, worth, b))
        texts = [[1, 2, 3, 4, 5, 6, 100 + i] for i in range(64)]
        for _ in range(56):
            p.sdsat_propose_with_context(_input_batch(texts), [[9]] * 64, None, None,
                                         SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={},
                                                         scheduled_spec_decode_tokens={}, total_num_scheduled_tokens=64))
        assert all(b == 64 and (n > 0) == took and worth == 0 for n, took, b, worth in noted)  # nothing to send
        return [n for n, _, _, _ in noted]

    assert run(1) == [0, 64] + ([0] * 5 + [64]) * 9  # as the test above: every 6 steps
    assert run(LookupLedger.STRIDE_OFF) == [0, 64] + [0] * 47 + [64] + [0] * 6


def test_a_request_in_back_off_whose_chain_is_turned_down_waits_as_after_a_miss(monkeypatch):
    """Batch 64, every request in back-off and looping on its own text: its match is long (q 0.9), so
    its first token clears the lookup bar (0.82 with a token at 0.01 of a forward), but the whole chain
    falls short of what a step of 64 must gain, so decide turns it down. That is a miss like finding
    nothing: the request waits as note_lookup_miss says, the ledger's stride included. With the stride
    at 1 it is looked up on every step, as before; with STRIDE_OFF on one step in STRIDE_OFF (before,
    every step whatever the ledger said: up to ~1.4 lookups and decisions a step at batch 16 on norepeat,
    results 30.3)."""
    from sdsat_vllm.vllm_plugin import proposer as P
    from sdsat_vllm.vllm_plugin.cost_model import CostModel
    from sdsat_vllm.vllm_plugin.lookup import LookupLedger
    from sdsat_vllm.vllm_plugin.policy import AdaptiveDrafter, RecentBatch

    def run(stride: int) -> list[tuple[int, int, int]]:
        p = _adaptive_proposer()
        p.drafter = AdaptiveDrafter(3, 3, CostModel.linear(0.01), online=True)
        p.drafter.alpha_global = [0.0] * 3  # SATs never right: no probes, every request in back-off
        p._recent_batch = RecentBatch()
        p.drafter.ledger(64).stride = stride
        assert 0.8 < p.drafter._lookup_bar(64, 3) < 0.9  # a 0.9 first token clears it
        calls, decided, real_lc, real_decide = [], [], P.lookup_chains, p.drafter.decide
        monkeypatch.setattr(P, "lookup_chains", lambda *a, **k: calls.append(a[5]) or real_lc(*a, **k))
        monkeypatch.setattr(p.drafter, "decide", lambda *a, **k: decided.append(1) or real_decide(*a, **k))
        texts = [[5, 6, 7, 8, 9, 10, 11] * 6 + [5, 6, 7]] * 64  # "8 9 10" follows a long match
        per_step = []
        for _ in range(2 + 2 * LookupLedger.STRIDE_OFF):
            calls.clear(), decided.clear()
            out = p.sdsat_propose_with_context(_input_batch(texts), [[9]] * 64, None, None,
                                               SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={},
                                                               scheduled_spec_decode_tokens={},
                                                               total_num_scheduled_tokens=64))
            assert out == [[]] * 64  # nothing pays at batch 64
            per_step.append((len(calls), len(decided)))  # lookups (whole chains, once a request), decisions
        return per_step

    # the first step decides every new request; then the requests in back-off are looked up, decided
    # and turned down
    s = LookupLedger.STRIDE_OFF
    assert run(1) == [(64, 64)] * (2 + 2 * s)
    assert run(s) == [(64, 64)] + ([(64, 64)] + [(0, 0)] * (s - 1)) * 2 + [(64, 64)]


def test_proposer_counts_what_the_chains_it_sends_to_requests_in_back_off_are_worth(monkeypatch):
    """A request in back-off at batch 1 whose text repeats itself: the chain its lookup finds is sent,
    and the step's report to the ledger carries that decision's expected net gain (Decision.gain), the
    SAT tail that measured step sizes add to it at batch 1 notwithstanding (every size costs the same
    here: StepTimes fills the step)."""
    from sdsat_vllm.vllm_plugin.cost_model import CostModel
    from sdsat_vllm.vllm_plugin.policy import AdaptiveDrafter, RecentBatch

    p = _adaptive_proposer()
    p.drafter = AdaptiveDrafter(3, 3, CostModel.linear(0.075), online=True)
    p.drafter.alpha_global = [0.0] * 3  # SATs never right: the request starts in back-off
    p._recent_batch = RecentBatch()
    for size in range(1, 9):
        for _ in range(p.drafter.step_times.MIN_SAMPLES):
            p.drafter.step_times.add(size, 0.03)
    noted, gains = [], []
    real_note, real_decide = p.drafter.note_lookups, p.drafter.decide
    monkeypatch.setattr(p.drafter, "note_lookups",
                        lambda n, sec, worth, b: noted.append((n, worth)) or real_note(n, sec, worth, b))

    def decide(*a, **k):
        d = real_decide(*a, **k)
        gains.append(d.gain if d.lookup else 0.0)
        return d

    monkeypatch.setattr(p.drafter, "decide", decide)
    text = [5, 6, 7, 8, 9, 10, 11] * 6 + [5, 6, 7]  # "8 9 10" follows, a 3-token-and-longer match
    sched = SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={}, scheduled_spec_decode_tokens={},
                            total_num_scheduled_tokens=1)
    # first decision: no match (a new token), the request enters back-off with nothing in flight
    assert p.sdsat_propose_with_context(_input_batch([text[:-1] + [99]]), [[9]], None, None, sched) == [[]]
    assert noted == [(0, 0.0)] and p.drafter.may_idle("r0")
    out = p.sdsat_propose_with_context(_input_batch([text]), [[9]], None, None, sched)
    assert out[0][:3] == [8, 9, 10] and out[0][3:] == SATS[:3]  # the chain, then a full tail
    assert noted[-1][0] == 1 and gains[-1] > 0 and noted[-1][1] == pytest.approx(gains[-1])


def _requests(max_tokens):
    """The runner's request states the proposer reads (vLLM's CachedRequestState.sampling_params)."""
    return {f"r{i}": SimpleNamespace(sampling_params=None if m is None else SimpleNamespace(max_tokens=m))
            for i, m in enumerate(max_tokens)}


def test_tokens_left_by_max_tokens_and_the_models_length():
    batch = _input_batch([[1] * 10, [1] * 10, [1] * 10, [1] * 10, [1] * 500])
    batch.num_prompt_tokens = [4, 4, 8, 4, 100]  # 6, 6, 2, 6 and 400 tokens produced, this step's included
    sampled = [[7], [7], [7], [], [7]]
    reqs = _requests([8, 100, 5, 7, None])  # r4: no sampling params (pooling): the model's length alone
    assert tokens_left(batch, sampled, reqs, 512, 11) == {0: 2, 2: 3}   # r1 far from both; r3 sampled nothing
    assert tokens_left(batch, sampled, reqs, 505, 11) == {0: 2, 2: 3, 4: 5}
    assert tokens_left(batch, sampled, reqs, 512, 2) == {0: 2}
    batch.num_prompt_tokens[0] = 1  # 9 produced of 8: finished (vLLM stops it), nothing left
    assert tokens_left(batch, sampled, reqs, 512, 11)[0] == 0


def test_proposer_cuts_drafts_and_tail_to_what_max_tokens_leaves(monkeypatch):
    """The chain and tail of test_proposer_counts_what_the_chains_it_sends..., near the request's
    max_tokens: with 3 tokens left after this step only 2 drafts can land (the next step commits at most
    drafts + 1) and no tail draft could be used; with 1 left nothing is sent, though the policy still hears
    the step. Without the runner's request states (or far from max_tokens) nothing is cut. The fixed
    policy's SAT-only step after a prefill: its tail is cut alike."""
    from sdsat_vllm.vllm_plugin.cost_model import CostModel
    from sdsat_vllm.vllm_plugin.policy import AdaptiveDrafter, RecentBatch

    text = [5, 6, 7, 8, 9, 10, 11] * 6 + [5, 6, 7]  # "8 9 10 11 5" follows: a long match
    sched = SimpleNamespace(num_spec_tokens_to_schedule=3, num_scheduled_tokens={}, scheduled_spec_decode_tokens={},
                            total_num_scheduled_tokens=1)

    def propose(max_tokens, p=None):
        if p is None:
            p = _adaptive_proposer()
            p.drafter = AdaptiveDrafter(3, 3, CostModel.linear(0.001), online=False)
            p.drafter.alpha_global = [0.0] * 3  # the SATs never right: back-off, lookup chains only
            p._recent_batch = RecentBatch()
        p.max_model_len = 2048
        seen = []
        real = p.drafter.decide
        monkeypatch.setattr(p.drafter, "decide", lambda *a, **k: seen.append(k["room"]) or real(*a, **k))
        batch = _input_batch([text])
        batch.num_prompt_tokens = [len(text) - 10]  # 10 tokens produced
        p.sdsat_propose_with_context(_input_batch([text[:-1] + [99]]), [[9]], None, None, sched)  # enters back-off
        seen.clear()
        reqs = None if max_tokens is None else _requests([max_tokens])
        return p.sdsat_propose_with_context(batch, [[9]], None, None, sched, requests=reqs), seen

    assert propose(None) == ([[8, 9, 10] + SATS], [None])
    assert propose(100) == ([[8, 9, 10] + SATS], [None])  # far from max_tokens: not even looked at
    assert propose(13) == ([[8, 9]], [3])
    assert propose(11) == ([[]], [1])

    fixed = _adaptive_proposer()
    fixed.adaptive, fixed.max_model_len = False, 2048
    prefill = _input_batch([text])
    prefill.num_prompt_tokens = [len(text) - 1]  # the prefill's token is the first produced
    for max_tokens, want in ((None, SATS), (40, SATS), (4, SATS[:1]), (3, []), (1, [])):
        reqs = None if max_tokens is None else _requests([max_tokens])
        assert fixed.sdsat_propose_with_context(prefill, [[9]], None, None, sched, requests=reqs) == [want], max_tokens


# ---------------------------------------------------------------- short form


def fake_spec(model="sdsat", n=None, method=None, block=None, path="/m/tiny"):
    hf = SimpleNamespace(_name_or_path=path)
    if block is not None:
        hf.sdsat = block
    target = SimpleNamespace(hf_config=hf, model=path)
    return SimpleNamespace(model=model, method=method, num_speculative_tokens=n, target_model_config=target)


BLOCK = {"sat_token_ids": [384] * 4, "num_sat": 4}


def test_short_form_resolves_to_custom_class_and_defaults_n_to_k():
    spec = fake_spec(block=BLOCK)
    resolve_short_form(spec)
    assert spec.method == "custom_class" and spec.model == PROPOSER_PATH and spec.num_speculative_tokens == 4


def test_short_form_keeps_n():
    spec = fake_spec(block=BLOCK, n=2)
    resolve_short_form(spec)
    assert spec.num_speculative_tokens == 2


def test_short_form_rejects_n_above_k():
    with pytest.raises(ValueError, match=r"num_speculative_tokens=5.*K=4"):
        resolve_short_form(fake_spec(block=BLOCK, n=5))


def test_short_form_model_without_block():
    with pytest.raises(ValueError, match=r"no 'sdsat' block"):
        resolve_short_form(fake_spec(block=None))


def test_short_form_conflicting_method():
    with pytest.raises(ValueError, match="custom_class"):
        resolve_short_form(fake_spec(block=BLOCK, method="draft_model"))


def test_lookup_chains_plain_and_after_the_first_sat_draft():
    import numpy as np
    import torch

    text = np.array([1, 2, 6, 6, 3, 9, 1, 2])
    # SAT rows of this row at gathered rows 1 and 2 (row 0 is another request's): argmaxes 3 and 9
    probs = torch.full((3, 12), 0.01)
    probs[1, 3], probs[1, 6] = 0.5, 0.2
    probs[2, 9], probs[2, 6] = 0.6, 0.1
    chains = lookup_chains(text, [3, 9], [0.5, 0.6], probs.log(), 1, 3, {S})
    (plain, q_plain, n_plain, s_plain), (hybrid, q_hybrid, n_hybrid, s_hybrid) = chains
    assert (n_plain, n_hybrid, s_plain, s_hybrid) == (2, 1, "text", "text")
    # "1 2" seen before: 6 6 3 follow; rows 1 and 2 score the first two tokens, the third has the prior
    p2, p1 = lookup_prior_q(2), lookup_prior_q(1)
    assert plain == [6, 6, 3]
    assert q_plain == pytest.approx([1 - 0.8 * (1 - p2), 1 - 0.9 * (1 - p2), p2])
    # the first SAT draft (3), then what followed the earlier "3" (a one-token match): 9 1
    assert hybrid == [3, 9, 1]
    assert q_hybrid == pytest.approx([0.5, 1 - 0.4 * (1 - p1), p1])
    # no fresh rows: the plain chain only, scored by its match alone; cap 0: nothing
    assert lookup_chains(text, [], [], None, 0, 2, {S}) == [([6, 6], [p2, p2], 2, "text")]
    assert lookup_chains(text, [3], [0.5], probs.log(), 1, 0, {S}) == []
    # a SAT id is never drafted: the chain stops before it
    assert lookup_chains(np.array([1, 2, 7, S, 1, 2]), [], [], None, 0, 3, {S}) == [([7], [p2], 2, "text")]


def test_lookup_chains_from_a_datastore_too():
    """With a datastore, each lookup is made in the text and in the datastore: the datastore's chains
    are scored by score_datastore (prior of the match length times the share, with the SAT rows'
    probabilities where the row has them); its continuation stops before a SAT id like the text's."""
    import numpy as np
    import torch

    from sdsat_vllm.datastore import Datastore
    from sdsat_vllm.vllm_plugin.lookup import score_datastore

    store = Datastore.from_documents([[4, 5, 8, 8], [4, 5, 8, 2], [0, 3, 7, 7]])
    text = np.array([1, 2, 4, 5])  # "4 5" is not earlier in the text; the datastore has it twice
    probs = torch.full((2, 12), 0.01)
    probs[0, 3], probs[0, 8] = 0.5, 0.3
    probs[1, 7] = 0.4
    (store_chain, q, ngram, source), = lookup_chains(text, [], [], None, 0, 3, {S}, store)
    # both occurrences continue with 8; then one with 8, one with 2 (a tie: the smaller id), whose document ends
    assert (store_chain, ngram, source) == ([8, 2], 2, "datastore")
    assert q == pytest.approx(score_datastore(2, [1.0, 0.5], []))
    # a fresh SAT row at gathered row 0 (argmax 3) scores the first token; after the draft ("4 5 3",
    # "5 3") nothing matches in the text, and the datastore has "3" alone (a 1-token match: then 7 7)
    chains = lookup_chains(text, [3], [0.5], probs.log(), 0, 3, {S}, store)
    assert chains == [([8, 2], pytest.approx(score_datastore(2, [1.0, 0.5], [0.3])), 2, "datastore"),
                      ([3, 7, 7], pytest.approx([0.5] + score_datastore(1, [1.0, 1.0], [])), 1, "datastore")]
    # "0 3" then 7 7 (the document ends); after the draft 7, "0 3 7" then 7: a 3-token match
    text = np.array([1, 0, 3])
    chains = lookup_chains(text, [7], [0.4], probs.log(), 1, 3, {S}, store)
    assert chains == [([7, 7], pytest.approx(score_datastore(2, [1.0, 1.0], [0.4])), 2, "datastore"),
                      ([7, 7], pytest.approx([0.4, score_datastore(3, [1.0], [])[0]]), 3, "datastore")]
    assert lookup_chains(text, [], [], None, 0, 3, {7}, store) == []  # 7 is a SAT id here: nothing left


def test_finished_requests_responses_go_to_the_response_datastore():
    """Each request's committed tokens are gathered step by step (the prefill's first token, then each
    step's accepted drafts and bonus token); when it leaves the batch its response is searchable."""
    from sdsat_vllm.datastore import ResponseDatastore
    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    proposer = SimpleNamespace(_live_responses={}, responses=ResponseDatastore(100))
    track = SDSATProposer._track_responses
    track(proposer, ["a", "b"], [[5], []])  # b still prefilling (a chunk): nothing sampled
    track(proposer, ["a", "b"], [[6, 7], [1]])
    track(proposer, ["a", "b"], [[8], [2, 3]])
    assert proposer._live_responses == {"a": [5, 6, 7, 8], "b": [1, 2, 3]} and len(proposer.responses) == 0
    track(proposer, ["b", "c", "d"], [[4], [9, 10], [11]])  # a finished
    assert proposer._live_responses == {"b": [1, 2, 3, 4], "c": [9, 10], "d": [11]}
    assert proposer.responses.match([0, 6], 3).tokens == [7, 8]
    track(proposer, [], [])  # b, c and d left too: handed over in the order they came (TP ranks agree)
    assert not proposer._live_responses and len(proposer.responses) == 4 + 4 + 2  # d's single token holds nothing
    assert [d.tolist() for d in proposer.responses._docs] == [[5, 6, 7, 8], [1, 2, 3, 4], [9, 10]]
    assert proposer.responses.match([2], 2).tokens == [3, 4]


def test_decode_only_steps_feed_the_cost_model():
    # each request scheduled its last token and its speculative ones (drafts + SATs)
    assert decode_only({"a": 1, "b": 4}, {"b": [7, 8, 9]})
    assert decode_only({}, {})
    # a prefill (or a chunk of one), beside a decode or alone, does not
    assert not decode_only({"a": 1, "b": 120}, {})
    assert not decode_only({"a": 3}, {"a": [5]})


def test_other_speculative_configs_untouched():
    spec = fake_spec(model="ngram", method="ngram", block=None)
    resolve_short_form(spec)
    assert spec.model == "ngram" and spec.method == "ngram"


# ---------------------------------------------------------------- metrics


def test_mean_acceptance_length_from_counters():
    s = SpecDecodeSummary(num_drafts=10, num_draft_tokens=20, num_accepted_tokens=15,
                          num_accepted_tokens_per_pos=[6, 5, 4])
    assert s.mean_acceptance_length == pytest.approx(2.5)
    assert s.acceptance_rate == pytest.approx(0.75)
    assert s.acceptance_rate_per_pos == pytest.approx([0.6, 0.5, 0.4])
    d = s - SpecDecodeSummary(num_drafts=4, num_draft_tokens=8, num_accepted_tokens=5,
                              num_accepted_tokens_per_pos=[2, 2, 1])
    assert (d.num_drafts, d.num_draft_tokens, d.num_accepted_tokens, d.num_accepted_tokens_per_pos) == (
        6, 12, 10, [4, 3, 3])


def test_prometheus_parsing():
    text = """
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 12.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 30.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 18.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 9.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 6.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 3.0
"""
    s = from_prometheus(text)
    assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == (12, 30, 18)
    assert s.num_accepted_tokens_per_pos == [9, 6, 3] and s.mean_acceptance_length == pytest.approx(2.5)


# ---------------------------------------------------------------- the entry point stays light


def test_plugin_import_is_light():
    code = ("import sys, sdsat_vllm.vllm_plugin as p, sdsat_vllm.vllm_plugin.metrics; "
            "print(callable(p.register), 'torch' in sys.modules, 'vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_registry_documents_every_patch():
    from sdsat_vllm.vllm_plugin.patches import REGISTRY, WRITTEN_FOR

    assert set(REGISTRY) >= {"speculative_config_sdsat", "runner_propose_context", "spec_stats_exclude_sat",
                             "sat_logit_mask", "cpu_expand_kernel_fix", "cli_speculative_model_alias",
                             "sdsat_request_validation"}
    for p in REGISTRY.values():
        assert p.why and p.remove_when and p.vllm_version == WRITTEN_FOR and callable(p.check)
        assert p.module.startswith("vllm.")


def test_the_proposer_finds_the_model_directorys_datastore(tmp_path):
    """`datastore`: "auto" loads the model directory's (sdsat_datastore/), none where it has none;
    "none" never; a path that one; ids outside the served vocabulary are refused before serving."""
    from sdsat_vllm.datastore import MODEL_DIR_FILE, DatastoreError, save_datastore
    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    class ModelConfig:
        model = str(tmp_path)

        @staticmethod
        def get_vocab_size():
            return 10

    p = SDSATProposer.__new__(SDSATProposer)
    p.options = {"datastore": "auto"}
    assert p._load_datastore(ModelConfig) is None
    save_datastore(tmp_path / MODEL_DIR_FILE, [[1, 2, 3]], {})
    assert p._load_datastore(ModelConfig).match([1, 2], 1).tokens == [3]
    p.options = {"datastore": "none"}
    assert p._load_datastore(ModelConfig) is None
    other = save_datastore(tmp_path / "other.safetensors", [[4, 5, 12]], {})
    p.options = {"datastore": str(other)}
    with pytest.raises(DatastoreError, match="outside the served model's vocabulary"):
        p._load_datastore(ModelConfig)
