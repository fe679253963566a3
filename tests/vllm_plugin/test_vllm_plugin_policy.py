"""Fast tests: the adaptive drafting policy as pure functions (hand-built probabilities and costs) and
its state machine on simulated requests (no vLLM engine, no torch model). The cost model, the lookups
and the options have their own files (test_vllm_plugin_cost_model.py, _lookup.py, _options.py)."""

import random
from dataclasses import replace

import pytest

from sdsat_vllm.vllm_plugin import lookup, policy
from sdsat_vllm.vllm_plugin.cost_model import CostModel, StepTimes, decision_batch
from sdsat_vllm.vllm_plugin.lookup import LookupLedger, lookup_prior_q, score_lookup, suffix_match
from sdsat_vllm.vllm_plugin.policy import (AcceptanceCalibration, AdaptiveDrafter, Decision, StaleSteps,
                                           best_steady_state, chain_gains, choose_draft_length, expected_accepted,
                                           fit_to_room, probe_due, probe_interval, steady_state)

CPU = CostModel.linear(0.075)      # the 2-core VM of issue 13: an 11-token forward costs 1.7x a 1-token one
CHEAP = CostModel.linear(0.001)    # a GPU at small N: extra tokens nearly free
# seeded sampled requests on this CPU (results 11.1): a step on the speculative path costs 20% more
SAMPLED = CostModel.linear(0.06, step_overhead=0.2)
HIGH, LOW = [0.95] * 4, [0.05] * 4


# ---------------------------------------------------------------- the policy


def test_chain_gains():
    assert chain_gains([0.5, 0.5, 1.0]) == [0.5, 0.25, 0.25]
    assert chain_gains([]) == []


def test_steady_state_by_hand():
    # m = 1, alpha 0.5: A = .5, E_D = 1.5, pi_D = 2/3, pi_S = 1/3; tokens 4/3 per step, 8/3 tokens per forward
    s = steady_state([0.5], 1, CostModel.linear(0.1))
    assert s.tokens_per_step == pytest.approx(4 / 3) and s.tokens_in_forward == pytest.approx(8 / 3)
    assert s.throughput == pytest.approx((4 / 3) / (1 + 0.1 * 8 / 3))
    plain = steady_state([0.5], 0, CostModel.linear(0.1), batch_size=4)
    assert plain.tokens_per_step == 1 and plain.batch_tokens == 4 and plain.throughput == pytest.approx(4 / 1.4)


def test_drafts_more_when_likely_and_cheap():
    d = choose_draft_length(HIGH, 4, CHEAP)
    assert d == Decision(4, 4)


def test_no_drafts_when_unlikely_and_costly():
    d = choose_draft_length(LOW, 4, CPU, steps_since_probe=0)
    assert d.drafts == 0 and d.tail == 0 and not d.probe


def test_monotone_in_probability_and_cost():
    ms = [choose_draft_length([p] * 4, 4, CPU, steps_since_probe=0).drafts for p in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)]
    assert ms == sorted(ms) and ms[0] == 0 and ms[-1] == 4
    by_cost = [choose_draft_length([0.6] * 4, 4, CostModel.linear(r), steps_since_probe=0)
               for r in (0.001, 0.015, 0.075, 0.3, 1.0)]
    assert [d.drafts for d in by_cost] == sorted([d.drafts for d in by_cost], reverse=True)
    assert [d.tail for d in by_cost] == sorted([d.tail for d in by_cost], reverse=True)
    assert by_cost[0] == Decision(4, 4) and by_cost[-1].tail == 0


def test_never_more_than_n_drafts_in_hand_or_cap():
    assert choose_draft_length([0.99] * 6, 4, CHEAP) == Decision(4, 4)        # n = 4
    assert choose_draft_length([0.99] * 2, 4, CHEAP).drafts == 2              # only 2 fresh drafts
    assert choose_draft_length([0.99] * 4, 4, CHEAP, cap=2) == Decision(2, 2)  # vLLM's per-batch-size count
    assert choose_draft_length([0.99] * 4, 4, CHEAP, cap=0) == Decision(0, 0)  # speculation off at this size


def test_drafts_and_tail_fit_the_tokens_a_request_has_left():
    # `left` tokens after this step: the next step commits at most drafts + 1 of them, and the tail
    # drafts the step after, which has at most left - 2 - drafts to use
    assert fit_to_room(3, 3, None) == (3, 3)
    assert fit_to_room(3, 3, 8) == (3, 3)      # room for the chain and all the tail drafts next step
    assert fit_to_room(3, 3, 7) == (3, 2)
    assert fit_to_room(3, 3, 4) == (3, 0)      # every draft can land; nothing after them could
    assert fit_to_room(3, 3, 3) == (2, 0)
    assert fit_to_room(0, 3, 3) == (0, 1)      # a SAT-only step: one draft next step, then the last token
    assert fit_to_room(0, 3, 2) == (0, 0)      # the next step's own token, then one more: plain steps
    assert fit_to_room(2, 1, 1) == (0, 0)      # the last token
    assert fit_to_room(2, 1, 0) == (0, 0)      # finished this step


def test_decide_cuts_drafts_and_tail_to_the_room_and_still_learns():
    def drafter():
        d = AdaptiveDrafter(4, 4, CHEAP, online=False)
        d.alpha_global = [0.95] * 4
        return d

    assert drafter().decide("r", [0.99] * 4) == Decision(4, 4)  # control: no bound
    d = drafter().decide("r", [0.99] * 4, room=6)
    assert (d.drafts, d.tail) == (4, 0)
    near = drafter()
    d = near.decide("r", [0.99] * 4, room=4)
    assert (d.drafts, d.tail) == (3, 0)
    # the request's last token: nothing sent, and what this step verified (3 drafts, 2 accepted) is
    # still recorded by position
    d = near.decide("r", [], verified_real=3, accepted=2, room=1)
    assert (d.drafts, d.tail) == (0, 0)
    assert [sum(row) for row in near.calibration.offered] == [1, 1, 1, 0]
    assert [sum(row) for row in near.calibration.accepted] == [1, 1, 0, 0]


def test_tail_is_what_the_next_step_would_draft():
    for alpha in ([0.9] * 4, [0.7] * 4, [0.9, 0.9, 0.2, 0.2], [0.3] * 4):
        star = best_steady_state(alpha, 4, CPU).m
        d = choose_draft_length([], 4, CPU, alpha=alpha, steps_since_probe=0)
        assert d == Decision(0, star), alpha
    assert best_steady_state([0.9, 0.9, 0.2, 0.2], 4, CPU).m == 2   # positions 3, 4 do not pay for themselves
    assert best_steady_state([0.9] * 4, 4, CPU).m == 4


def test_a_draft_that_risks_a_valuable_tail_is_held_back():
    # same drafts in hand: a good request (its next drafts are worth a lot) keeps its tail fresh,
    # a poor one (little to lose) also sends the 50% draft
    good = choose_draft_length([0.95, 0.95, 0.5], 4, CPU, alpha=[0.9] * 4, steps_since_probe=0)
    poor = choose_draft_length([0.95, 0.95, 0.5], 4, CPU, alpha=[0.3] * 4, steps_since_probe=0)
    assert good.drafts == 2 and good.tail == 4
    assert poor.drafts == 3 and poor.tail < good.tail


def test_a_chain_unlikely_to_be_accepted_whole_goes_without_its_tail():
    # The tail drafts the next step only if every draft is accepted. One draft of chance p in hand, a
    # request with m* = 1 whose stale steps send lookup chains (StaleSteps: 0.35 accepted of 1 sent,
    # fresh after 80% of them); by hand, W = (r_D - r_S) / (1 - A + a_S), and the three choices score
    # w - kappa (no draft, the tail), p - 2 kappa + p W (draft and tail), p - kappa (the draft alone)
    alpha, stale = [0.6, 0.4, 0.3, 0.2], StaleSteps(drafts=1.0, gain=0.35, to_fresh=0.8)
    steady = best_steady_state(alpha, 4, CPU)
    kappa = steady.throughput * CPU.marginal(steady.batch_tokens)
    assert steady.m == 1
    w = (alpha[0] - kappa - (stale.gain - kappa * stale.drafts)) / (1.0 - alpha[0] + stale.to_fresh)
    expected = {}
    for p1 in (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 0.95):
        scores = {Decision(0, 1): w - kappa, Decision(1, 1): p1 - 2 * kappa + p1 * w, Decision(1, 0): p1 - kappa}
        expected[p1] = max(scores, key=scores.get)
        d = choose_draft_length([p1], 4, CPU, alpha=alpha, steps_since_probe=0, stale=stale)
        assert (d.drafts, d.tail) == (expected[p1].drafts, expected[p1].tail), (p1, d, scores)
        if d.tail == 0:  # without the option, the tail stays
            assert choose_draft_length([p1], 4, CPU, alpha=alpha, steps_since_probe=0, stale=stale,
                                       drop_tail=False).tail == 1
    # the cases the loop covers: too weak to send, sent without the tail, sure enough to keep it
    assert [(expected[p].drafts, expected[p].tail) for p in (0.2, 0.3, 0.4, 0.6)] == [(0, 1), (1, 0), (1, 0), (1, 1)]
    # a probe's tail serves the estimates: it stays
    probe = choose_draft_length([0.3], 4, CPU, alpha=alpha, steps_since_probe=10 ** 6, stale=stale)
    assert probe.probe and probe.tail == 4


def test_a_stale_step_that_lookups_fill_is_worth_less_to_avoid():
    # A weak lookup chain in hand (first token right 30%) and SAT drafts worth keeping fresh: when a step
    # without fresh drafts is a SAT-only step (the default, stale=None), the chain is held back so the
    # tail stays fresh; when such steps commit tokens of their own (lookup chains: 0.8 accepted of 3
    # sent, rarely ending fresh), losing the tail costs less and the chain goes out.
    p, alpha = [0.3, 0.5, 0.5], [0.6, 0.4, 0.3, 0.2]
    held = choose_draft_length(p, 4, CPU, alpha=alpha, steps_since_probe=0)
    filled = StaleSteps(drafts=3.0, gain=0.8, to_fresh=0.2)
    sent = choose_draft_length(p, 4, CPU, alpha=alpha, steps_since_probe=0, stale=filled, drop_tail=False)
    assert held.drafts == 0 and sent.drafts >= 2 and sent.tail == held.tail > 0
    # and a chain this unlikely to be accepted whole (g_2 = .15) goes without the tail it would waste
    bare = choose_draft_length(p, 4, CPU, alpha=alpha, steps_since_probe=0, stale=filled)
    assert bare == replace(sent, tail=0)
    # the prior is the SAT-only step: the same decision as without the figures
    assert choose_draft_length(p, 4, CPU, alpha=alpha, steps_since_probe=0, stale=StaleSteps()) == held


def test_stale_steps_are_counted_from_what_the_drafter_verified():
    d = AdaptiveDrafter(4, 4, CHEAP, online=False)
    assert d.stale == StaleSteps()
    first = d.decide("r", [], lookup_q=[0.9, 0.9], lookup_source="text")  # a new request: no fresh rows
    assert first.lookup and first.drafts == 2
    d.decide("r", [0.9] * 4, verified_real=2, accepted=1)  # one of the two accepted: the next step is stale
    assert d.stale.drafts == pytest.approx(StaleSteps.STEP * 2)
    assert d.stale.gain == pytest.approx(StaleSteps.STEP * 1)
    assert d.stale.to_fresh == pytest.approx(1 - StaleSteps.STEP)
    before = d.stale.drafts
    d.decide("r", [0.9] * 4, verified_real=0, accepted=0)  # that step had fresh rows: not a stale step
    assert d.stale.drafts == before
    # a request in back-off decodes plainly: its steps are not stale steps of a speculating request
    d = AdaptiveDrafter(4, 4, CPU, online=False)
    d.alpha_global = [0.01] * 4
    assert d.decide("w", []) == Decision(0, 0)
    d.decide("w", [], verified_real=0, accepted=0)
    assert d.stale == StaleSteps()


# a CPU's batch-1 steps as measured on the 2-core VM (results 26.1): 2 tokens cost more than 3 to 6
BUMPY = {2: 0.031, 3: 0.0256, 4: 0.0255, 5: 0.0258, 6: 0.0260, 7: 0.030, 8: 0.0315, 9: 0.032}


def test_measured_step_times_grow_the_tail_where_tokens_are_free():
    alpha = [0.6, 0.4, 0.3, 0.2]
    linear = choose_draft_length([], 4, CPU, alpha=alpha, steps_since_probe=0)
    bumpy = choose_draft_length([], 4, CPU, alpha=alpha, steps_since_probe=0, step_times=BUMPY.get)
    assert linear.tail < 4 and bumpy == Decision(0, 4)  # a SAT-only step of 5 tokens costs less than one of 2
    # where the next size costs more, the tail stays: a table that rises from 2 tokens on
    rising = {n: 0.02 + 0.003 * n for n in range(1, 10)}
    assert choose_draft_length([], 4, CPU, alpha=alpha, steps_since_probe=0, step_times=rising.get) == linear
    # sizes not measured yet are not counted on
    assert choose_draft_length([], 4, CPU, alpha=alpha, steps_since_probe=0,
                               step_times={2: 0.031}.get) == linear
    # only at batch 1 (the table is of a whole step's tokens, one request's at batch 1)
    assert choose_draft_length([], 4, CPU, alpha=alpha, batch_size=4, steps_since_probe=0,
                               step_times=BUMPY.get) == choose_draft_length([], 4, CPU, alpha=alpha, batch_size=4,
                                                                            steps_since_probe=0)


def test_measured_step_times_price_drafts():
    # a weak third draft that the linear model's kappa turns down goes out where its token is free
    alpha, p = [0.6, 0.4, 0.3, 0.2], [0.9, 0.9, 0.3]
    assert choose_draft_length(p, 4, CostModel.linear(0.3), alpha=alpha, steps_since_probe=0,
                               drop_tail=False) == Decision(2, 1)
    free = {n: 0.026 for n in range(1, 10)}
    assert choose_draft_length(p, 4, CostModel.linear(0.3), alpha=alpha, steps_since_probe=0,
                               step_times=free.get) == Decision(3, 4)
    # a plain step (a request in back-off: nothing to send) stays plain, however cheap the table
    worst = choose_draft_length([], 4, CPU, alpha=[0.01] * 4, steps_since_probe=0, step_times=free.get)
    assert worst == Decision(0, 0)


def test_the_drafter_times_speculative_steps_only_when_the_cost_is_measured():
    d = AdaptiveDrafter(4, 4, CPU, online=True)
    for _ in range(StepTimes.MIN_SAMPLES):
        d.observe_step(3, 0.025, speculative=True)
        d.observe_step(1, 0.020, speculative=False)
    assert d.step_times.time(3) == pytest.approx(0.025) and d.step_times.time(1) is None
    assert AdaptiveDrafter(4, 4, CPU, online=False).step_times is None  # a cost the user fixed is kept


def test_the_speculative_paths_own_cost_is_paid_only_where_drafts_alone_would_put_a_step_on_it():
    # a 15% draft pays for its token on this CPU, not for moving a plain step onto the speculative path
    assert choose_draft_length([0.15], 4, CPU, alpha=LOW, steps_since_probe=0) == Decision(1, 0)
    assert choose_draft_length([0.15], 4, SAMPLED, alpha=LOW, steps_since_probe=0) == Decision(0, 0)
    # with a SAT tail in the step (here a probe's) the path is paid for already: the same draft goes out
    assert choose_draft_length([0.15], 4, SAMPLED, alpha=LOW, steps_since_probe=10 ** 6) == Decision(1, 4, True)
    # the steady state counts it: drafts that pay at c = 0 do not at c = 0.2
    assert best_steady_state([0.25] * 4, 4, CPU).m > 0 and best_steady_state([0.25] * 4, 4, SAMPLED).m == 0
    assert steady_state([0.5], 1, SAMPLED).throughput == pytest.approx((4 / 3) / (1 + 0.06 * 8 / 3 + 0.2))
    # and a probe on an otherwise plain step costs c too: rarer probes
    assert probe_interval(4, SAMPLED, 1) > probe_interval(4, CostModel.linear(0.06), 1)
    assert probe_interval(4, SAMPLED, 1, plain=False) <= probe_interval(4, CostModel.linear(0.06), 1)


def test_batch_backs_off():
    ds = [choose_draft_length([0.8] * 4, 4, CPU, alpha=[0.8] * 4, batch_size=b, steps_since_probe=0)
          for b in (1, 4, 16, 64)]
    assert [d.tail for d in ds] == sorted([d.tail for d in ds], reverse=True)
    assert ds[0].tail >= 3 and ds[-1].tail == 0
    assert ds[-1].drafts <= 1
    # where extra tokens are nearly free, a large batch still drafts
    assert choose_draft_length([0.8] * 4, 4, CHEAP, alpha=[0.8] * 4, batch_size=64).tail >= 3


def test_back_off_probes_every_k_steps_within_budget():
    k = probe_interval(4, CPU, 1, budget=0.03)
    assert 1 < k < 50
    assert probe_interval(4, CPU, 64) > probe_interval(4, CPU, 1)      # more requests probing: rarer
    assert probe_interval(4, CHEAP, 1) == 1                            # nearly free: every step
    # cost of probing every k steps stays within the budget
    assert 4 * CPU.marginal(1) / CPU.time(1) / k <= 0.03
    ds = [choose_draft_length(LOW, 4, CPU, steps_since_probe=s) for s in range(2 * k)]
    assert [d.probe for d in ds] == [False] * (k - 1) + [True] * (k + 1)
    assert all(d.tail == (4 if d.probe else 0) and d.drafts == 0 for d in ds)
    # the drafter's cycle: a new request probes first; its probes' rows pull its running acceptance
    # from the engine-wide starting value (0.5) down to the SATs' 0.05; once m* = 0 stays put, each
    # probe that confirms it doubles the interval, up to PROBE_BACKOFF_MAX * k
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    top = dr.PROBE_BACKOFF_MAX
    tails = []
    for _ in range(6 * top * k):
        dr.tick()
        tails.append(dr.decide("r", [0.05] * tails[-1] if tails else []).tail)
    on = [s for s, t in enumerate(tails) if t == 4]
    gaps = [b - a for a, b in zip(on, on[1:])]
    assert on[0] == 0 and all(t in (0, 4) for t in tails[on[1]:])  # m* = 0 from the second probe on
    assert gaps[1:] == sorted(gaps[1:]) and gaps[-2:] == [top * k, top * k] and {2 * k, 4 * k} <= set(gaps)
    # the second probe: the first engine probe step after k steps since the first one's rows were read
    assert k <= gaps[0] < 2 * k
    assert all((s + 2) % k == 0 for s in on[1:])  # on the engine's probe steps (the clock reads s + 1)
    # the probes' cost falls with the back-off: 8 times under the budget at the end
    assert 4 * CPU.marginal(1) / CPU.time(1) / gaps[-1] <= 0.03 / top
    # a probe that moves m* puts the interval back to k: the same request, its SATs now right (it
    # notices within the longest interval)
    backoffs = []
    for _ in range((top + 2) * k):
        dr.tick()
        tails.append(dr.decide("r", [0.9] * tails[-1] if tails else []).tail)
        backoffs.append(dr.states["r"].probe_backoff)
    assert backoffs[0] == top and 1 in backoffs and dr.states["r"].steady_m > 0
    # with the engine's clock (probe_clock) the probe falls on the same steps whatever the request
    assert [choose_draft_length(LOW, 4, CPU, steps_since_probe=s, probe_clock=c).probe
            for s, c in ((k - 1, k - 1), (10 * k, k), (k, 2 * k - 1))] == [True, False, True]
    # ... and only once k steps have passed since the last one (a request new in back-off included)
    assert [choose_draft_length(LOW, 4, CPU, steps_since_probe=s, probe_clock=c).probe
            for s, c in ((0, k - 1), (k - 2, 2 * k - 1))] == [False, False]
    assert [probe_due(k, s, c) for s, c in ((k - 1, None), (k - 2, None), (k - 1, k - 1), (k - 1, k))] == \
        [True, False, True, False]
    # an engine period of 2k (the engine's back-off): the request's own life still counts in k
    assert [probe_due(k, s, c, 2 * k) for s, c in ((k - 1, k - 1), (k - 1, 2 * k - 1), (k - 2, 2 * k - 1))] == \
        [False, True, False]
    assert [choose_draft_length(LOW, 4, CPU, steps_since_probe=k - 1, probe_clock=c, engine_backoff=2).probe
            for c in (k - 1, 2 * k - 1)] == [False, True]


def test_requests_in_back_off_probe_on_the_same_steps():
    """Requests that arrived at different steps, once past their first probe, probe together: the
    steps between carry no speculative token at all (vLLM's plain sampling path)."""
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    k = probe_interval(4, CPU, 2, budget=0.03)
    last: dict[str, int] = {}
    probes: dict[str, list[int]] = {"a": [], "b": []}
    for step in range(6 * k):
        dr.tick()
        for r in ("a", "b") if step >= 3 else ("a",):  # b arrives 3 steps later
            d = dr.decide(r, [0.05] * last.get(r, 0), batch_size=2)
            last[r] = d.tail
            if d.tail:
                probes[r].append(step)
    assert probes["b"][0] == 3  # a new request probes first
    # later probes of both fall on the engine's probe steps (the clock reads step + 1); their
    # back-off factors are powers of two, so the rarer prober's steps are among the other's
    later = {r: [s for s in probes[r] if s > 3 + k] for r in probes}
    assert later["a"] and later["b"] and all((s + 2) % k == 0 for r in later for s in later[r])
    rare, often = sorted(later.values(), key=len)
    assert set(rare) <= set(often)


def _short_requests(dr: AdaptiveDrafter, life: int, count: int, q: float = 0.05) -> list[tuple[int, str]]:
    """Requests one after another at batch 1, each `life` steps long, every SAT row scoring q: the
    (clock, request) of every probe sent."""
    probes = []
    for i in range(count):
        tail = 0
        for _ in range(life):
            dr.tick()
            d = dr.decide(f"r{i}", [q] * tail)
            tail = d.tail
            if d.probe:
                probes.append((dr.clock, f"r{i}"))
        dr.states.pop(f"r{i}")
    return probes


def test_probe_back_off_is_engine_wide():
    """Requests too short for a back-off of their own (at batch 1 on this CPU ~43 steps against k ~
    13) inherit the engine's: probes that keep confirming plans make every later request's probes
    rarer, up to PROBE_BACKOFF_MAX times; per request, each would start afresh and pay the full
    budget (session 47's policy, the flag off)."""
    k = probe_interval(4, CPU, 1, budget=0.03)
    life, count = 3 * k, 40

    def run(engine_wide: bool) -> tuple[AdaptiveDrafter, list[tuple[int, str]]]:
        dr = AdaptiveDrafter(4, 4, CPU, online=False)
        dr.ENGINE_PROBE_BACKOFF = engine_wide
        return dr, _short_requests(dr, life, count)

    per_request, per_probes = run(False)
    engine, engine_probes = run(True)
    top = engine.PROBE_BACKOFF_MAX
    assert per_request.engine_probe_backoff == 1 and len(per_probes) >= 1.5 * count  # ~life / k each
    assert engine.engine_probe_backoff == top
    # once grown, the engine probes on its own period's steps only, a request that has lived k steps
    late = [c for c, _ in engine_probes if c > 10 * life]
    assert late and all((c + 1) % (top * k) == 0 for c in late)  # the engine's probe steps (probe_due)
    assert len(late) <= (count * life - 10 * life) // (top * k) + 1
    per_late = [c for c, _ in per_probes if c > 10 * life]
    assert len(late) < len(per_late) / 3 and len(engine_probes) < len(per_probes) / 2
    # with the flag off every request probes, as before (each one's back-off starts at 1)
    assert {r for _, r in per_probes} == {f"r{i}" for i in range(count)}


def test_engine_probe_back_off_starts_afresh_when_rows_move_a_plan():
    """A request whose SAT rows turn good moves its m*: the engine's back-off goes back to 1 and the
    next new request probes first again. A plan moved by a request's room (its last steps) or by its
    first decision does not count."""
    k = probe_interval(4, CPU, 1, budget=0.03)
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    _short_requests(dr, 3 * k, 20)
    top = dr.PROBE_BACKOFF_MAX
    assert dr.engine_probe_backoff == top
    # a new request starts without a first probe while the engine's back-off is grown, even where the
    # engine-wide acceptance says one draft a step pays (with the back-off at 1 it would probe at once)
    fresh = AdaptiveDrafter(4, 4, CPU, online=False)
    for d in (dr, fresh):
        d.alpha_global = [0.9, 0.2, 0.05, 0.05]
        d.tick()
    assert fresh.decide("new", []).probe
    first = dr.decide("new", [])
    assert (first.probe, 0 < first.tail < 4, dr.engine_probe_backoff) == (False, True, top)
    # ... and one whose room runs out decides with a smaller limit, which moves nothing engine-wide
    dr.states["new"].steady_m = 1  # as if its plan had been one draft a step
    dr.tick()
    dr.decide("new", [], room=1)
    assert dr.engine_probe_backoff == top
    dr.states.pop("new")
    # its probe's rows say the SATs are right now: the plan moves, the engine probes every k steps again
    probes = _short_requests(dr, 2 * top * k, 1, q=0.95)
    assert dr.engine_probe_backoff == 1 and dr.states == {}
    assert probes and probes[0][0] - dr.clock + 2 * top * k <= top * k + 1  # within the longest interval
    assert dr.alpha_global[-1] > 0.5
    dr.tick()
    assert dr.decide("next", []).tail == 4  # the engine-wide acceptance: every SAT of the tail pays


def test_calibration():
    cal = AcceptanceCalibration(4)
    assert cal.estimate(0, 0.9) == pytest.approx(0.9)          # nothing seen: the SAT's own probability
    for _ in range(50):
        cal.record_step([0.9, 0.9, 0.9], 0)                     # overconfident SATs: first draft rejected
    assert cal.estimate(0, 0.92) < 0.1
    assert cal.estimate(1, 0.9) == pytest.approx(0.9)           # position 2 was never reached
    assert cal.estimate(0, 0.3) == pytest.approx(0.3)           # another bucket
    cal.record_step([0.5, 0.5], 2)
    assert cal.offered[1][5] == 1 and cal.accepted[1][5] == 1
    # estimates is estimate position by position, past the last one and out of [0, 1] too
    qs = [0.92, 0.5, -0.2, 1.3, 0.05, 0.9]
    assert cal.estimates(qs) == [cal.estimate(i, q) for i, q in enumerate(qs)]
    assert cal.estimates(qs)[0] < 0.1 and cal.estimates(qs)[3:] == [1.0, 0.05, 0.9]


# ---------------------------------------------------------------- simulated requests


def simulate(accept, q, cost, batch=1, n=4, steps=3000, fixed=False, seed=0, lookup_accept=None):
    """A request class whose drafts are accepted with per-position probability `accept` and whose
    SAT rows say `q`, in a batch of `batch` like it; its speed relative to plain decoding.
    lookup_accept: a lookup candidate of n tokens is always there, accepted with these (its SAT
    scores are q as well: the SATs cannot tell it apart)."""
    rng = random.Random(seed)
    drafter = AdaptiveDrafter(n, n, cost, online=False)
    fresh, verified, accepted, time, tokens = [], None, 0, 0.0, 0
    for _ in range(steps):
        rates = accept
        if fixed:
            m, t = len(fresh), n
        else:
            lq = None
            if lookup_accept is not None:
                lq = list(q[:len(fresh)]) + [lookup_prior_q(2)] * (n - len(fresh))
            d = drafter.decide("r", fresh, verified_real=verified, accepted=accepted, batch_size=batch, lookup_q=lq)
            m, t = d.drafts, d.tail
            assert m <= (n if d.lookup else len(fresh))
            rates = lookup_accept if d.lookup else accept
        assert m <= n and t <= n
        time += cost.time(batch * (1 + m + t), speculative=m + t > 0) / batch
        acc = 0
        while acc < m and rng.random() < rates[acc]:
            acc += 1
        tokens += 1 + acc
        verified, accepted = m, acc
        fresh = list(q[:t]) if acc == m else []
    return tokens / time * cost.time(batch) / batch


@pytest.mark.parametrize("batch", [1, 4, 16, 64])
def test_worst_case_within_10_percent_of_plain(batch):
    # drafts never accepted, with SATs that look confident (calibration has to learn) or not
    for q in ([0.9] * 4, [0.2] * 4):
        assert simulate([0.0] * 4, q, CPU, batch) >= 0.95
        assert simulate([0.0] * 4, q, CHEAP, batch) >= 0.95
    assert simulate([0.0] * 4, [0.9] * 4, CPU, batch, fixed=True) < 0.75  # what the fixed policy does


def test_good_drafts_pay_and_large_batches_back_off():
    assert simulate([0.8] * 4, [0.8] * 4, CPU, 1) > 1.4
    assert simulate([0.8] * 4, [0.8] * 4, CPU, 1) >= 0.95 * simulate([0.8] * 4, [0.8] * 4, CPU, 1, fixed=True)
    assert simulate([0.8] * 4, [0.8] * 4, CHEAP, 16) > 2.0
    big = simulate([0.8] * 4, [0.8] * 4, CPU, 64)
    assert big >= 0.95 and simulate([0.8] * 4, [0.8] * 4, CPU, 64, fixed=True) < 0.5


def test_steady_state_is_reused_while_its_inputs_stay_put(monkeypatch):
    import sdsat_vllm.vllm_plugin.policy as policy

    calls = []
    real = policy.best_steady_state
    monkeypatch.setattr(policy, "best_steady_state", lambda *a, **k: calls.append(a) or real(*a, **k))
    memo, fresh = AdaptiveDrafter(4, 4, CPU, online=False), AdaptiveDrafter(4, 4, CPU, online=False)
    seq = [([0.1] * 4, 64), ([], 64), ([], 64), ([], 16), ([], 16), ([0.9, 0.8, 0.7, 0.6], 16), ([], 16)]
    for i, (q, batch) in enumerate(seq):
        for d in (memo, fresh):
            d.tick()
        if "r" in fresh.states:
            fresh.states["r"].steady_memo = None  # `fresh` always recomputes: the reference
        n_before = len(calls)
        a = memo.decide("r", q, batch_size=batch)
        reused = len(calls) == n_before
        assert a == fresh.decide("r", q, batch_size=batch)
        # recomputed on the first step, when the batch size changed and when fresh rows moved alpha
        assert reused == (i in (1, 2, 4, 6)), i


def test_idle_requests_skip_decide_with_the_same_decisions():
    """The proposer's per-request shortcut (AdaptiveDrafter.idle): a request in back-off with no fresh
    SAT row, no drafts in flight and no probe due gets Decision(0, 0) without decide. Driven against
    a drafter that always decides, over batch sizes where requests back off, probe, read their
    probes and come back (some SATs good, some bad): the same decisions and states, step by step,
    and most steps under load take the shortcut."""
    rng = random.Random(0)
    short, ref = AdaptiveDrafter(4, 4, CPU, online=False), AdaptiveDrafter(4, 4, CPU, online=False)
    good = {f"r{i}": i % 4 == 0 for i in range(16)}
    last = {r: 0 for r in good}
    idle_steps = decided = 0
    for step in range(480):
        # then a batch that drains from 64 to 1, crossing a rung every few steps (the shortcut
        # re-evaluates the back-off there, decide's way)
        batch = 1 if step < 40 else 16 if step < 200 else 64 if step < 400 else max(1, 64 - (step - 400))
        live = list(good)[: 1 if batch == 1 else 16]
        for d in (short, ref):
            d.tick()
        for r in live:
            fresh = [rng.uniform(0.85, 0.95) if good[r] else rng.uniform(0.0, 0.1) for _ in range(last[r])]
            if not fresh and short.idle(r, batch):
                a = Decision(0, 0)
                idle_steps += 1
            else:
                a = short.decide(r, fresh, batch_size=batch)
                decided += 1
            b = ref.decide(r, fresh, batch_size=batch)
            assert (a.drafts, a.tail, a.probe) == (b.drafts, b.tail, b.probe), (step, r)
            sa, sb = short.states[r], ref.states[r]
            assert (sa.since_probe, sa.steady_m, sa.probe_backoff, sa.alpha) == \
                (sb.since_probe, sb.steady_m, sb.probe_backoff, sb.alpha), (step, r)
            last[r] = a.tail
    assert idle_steps > 4 * decided  # under load, nearly every request-step is the shortcut
    # never for a request it does not know, on a probe step, at a batch size where it would draft, with
    # drafts in flight
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    assert not dr.idle("r", 8)
    dr.tick()
    assert dr.decide("r", [], batch_size=8) == Decision(0, 0)  # new at batch 8: starts in back-off
    k = probe_interval(4, CPU, 8, budget=dr.probe_budget)
    not_idle = []
    for step in range(2 * k):
        dr.tick()
        if not dr.idle("r", 8):
            not_idle.append(step)
            assert dr.decide("r", [], batch_size=8).probe
    assert len(not_idle) == 2 and not_idle[1] - not_idle[0] == k
    assert not dr.idle("r", 1)  # alpha .5 pays for a draft at batch 1
    dr.states["r"].sent_q = [0.5]
    assert not dr.idle("r", 8)


def test_no_probes_where_no_acceptance_could_make_drafting_pay():
    """A probe only refreshes a request's alpha. On the CPU cost model at batch 64 SAT drafting would
    not pay even with every draft accepted (the extra rows cost more than the tokens they commit), so
    requests in back-off never probe there and every step after the first is the idle shortcut; at
    batch 8 they probe every k steps; where extra tokens are nearly free (CHEAP) they probe at 64 too."""
    assert best_steady_state([1.0] * 4, 4, CPU, 64).m == 0 < best_steady_state([1.0] * 4, 4, CPU, 8).m
    for cost, batch, probes in ((CPU, 64, False), (CPU, 8, True), (CHEAP, 64, True)):
        dr = AdaptiveDrafter(4, 4, cost, online=False)
        dr.alpha_global = [0.0] * 4  # new requests start in back-off, also where drafting is cheap
        sent = []
        for step in range(600):
            dr.tick()
            if step == 0 or not dr.idle("r", batch):
                d = dr.decide("r", [], batch_size=batch)
                assert d.drafts == 0 and d.probe == bool(d.tail)
                sent.append(d.tail)
        assert (sum(1 for t in sent if t) >= 2) == probes, (cost, batch, sent)
        if not probes:
            assert sent == [0]  # decided once, at its first step; the shortcut ever after


#: the CPU model with a speculative path that costs c (at batch 16 a quarter of a token, at 64 a token)
CPU_SPEC = CostModel.linear(0.075, step_overhead=0.1)


@pytest.mark.parametrize("cost", [CPU, CPU_SPEC], ids=["c0", "c"])
def test_lookup_candidates_that_cannot_pay_take_the_shortcut(cost):
    """A request in back-off with a lookup candidate whose first token cannot beat kappa
    (AdaptiveDrafter.lookup_worth False) takes the idle shortcut: driven against a drafter that
    always decides with the candidate, over batch sizes where requests back off, with candidates
    of every match length (some requests' lookups right, some wrong, the calibration learning from
    the ones sent): the same decisions and states step by step; both the shortcut and sent lookups
    occur."""
    rng = random.Random(1)
    short, ref = AdaptiveDrafter(4, 4, cost, online=False), AdaptiveDrafter(4, 4, cost, online=False)
    good = {f"r{i}": i % 3 == 0 for i in range(16)}
    sent = {r: (0, 0) for r in good}  # (tail, lookup drafts) sent last step
    shortcuts = lookups_sent = 0
    for step in range(300):
        batch = 4 if step < 100 else 16 if step < 200 else 64
        for d in (short, ref):
            d.tick()
        for r in good:
            tail, drafts = sent[r]
            fresh = [rng.uniform(0.0, 0.1) for _ in range(tail)]
            accepted = sum(1 for _ in range(drafts) if rng.random() < (0.95 if good[r] else 0.1))
            kw = dict(verified_real=drafts if drafts else None, accepted=accepted, batch_size=batch)
            lookup_q = score_lookup(rng.randrange(1, 8), [], 4) if rng.random() < 0.8 else None
            if not fresh and not drafts and (lookup_q is None or not short.lookup_worth(lookup_q, batch, req_id=r)) \
                    and short.idle(r, batch):
                a = Decision(0, 0)
                shortcuts += 1
            else:
                a = short.decide(r, fresh, lookup_q=lookup_q, **kw)
            b = ref.decide(r, fresh, lookup_q=lookup_q, **kw)
            assert a == b, (step, r)
            sa, sb = short.states[r], ref.states[r]
            assert (sa.since_probe, sa.steady_m, sa.probe_backoff, sa.alpha, sa.sent_q) == \
                (sb.since_probe, sb.steady_m, sb.probe_backoff, sb.alpha, sb.sent_q), (step, r)
            lookups_sent += a.lookup
            sent[r] = (a.tail, a.drafts if a.lookup else 0)
            if a.drafts and not a.lookup:
                sent[r] = (a.tail, 0)  # SAT drafts: nothing checks them here (the SAT rows were poor)
    assert shortcuts > 1000 and lookups_sent > 10
    # the bar: kappa of plain decoding and the step's min_gain spread over the chain (c = 0 here); a first
    # token the calibration rates above it is worth a decision
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    kappa = 16 * CPU.marginal(16) / CPU.time(16)
    bar = (1 + dr.min_gain) * kappa + dr.min_gain * 16 / 4
    assert dr._lookup_bar(16, 4) == pytest.approx(bar)
    assert dr.lookup_worth([bar + 0.02], 16) and not dr.lookup_worth([bar - 0.02, 1.0, 1.0], 16)
    assert not dr.lookup_worth([], 16) and not dr.lookup_worth([0.99], 16, cap=0)


def test_a_chain_in_back_off_must_lift_the_step_by_min_gain():
    """A request in back-off sends a lookup chain only if the step gains min_gain with it, as drafting must
    (best_steady_state): b + g_1 + .. + g_m tokens in (1 + cost / b) of a plain step's time against
    (1 + min_gain) b. At batch 16 on this CPU (kappa ~.55) a one-token chain right 70% of the time beats
    its own cost by .15 of a token, less than 2% of the step's 16 (results 28: chains that break even
    there cost the engine its lookups and its speculative path); at batch 1 a small surplus is 2% of the
    step. Probes (a tail) and drafting requests are priced as before."""
    backoff = dict(alpha=[0.0] * 4, steps_since_probe=0, probe_budget=0.0)
    kappa16 = 16 * CPU.marginal(16) / CPU.time(16)
    assert 0.7 - kappa16 > 0.1
    assert choose_draft_length([0.7], 4, CPU, batch_size=16, min_gain=0.0, **backoff) == Decision(1, 0)
    assert choose_draft_length([0.7], 4, CPU, batch_size=16, **backoff) == Decision(0, 0)
    # enough surplus for 2% of the step: a longer sure chain
    assert choose_draft_length([0.95] * 4, 4, CPU, batch_size=16, **backoff) == Decision(4, 0)
    kappa1 = CPU.marginal(1) / CPU.time(1)
    p1 = kappa1 + 0.03  # 0.03 of a token over its cost: more than 2% of a step of one token
    assert choose_draft_length([p1], 4, CPU, batch_size=1, **backoff) == Decision(1, 0)
    assert choose_draft_length([kappa1 + 0.01], 4, CPU, batch_size=1, **backoff) == Decision(0, 0)
    # a drafting request (m* > 0) is not held to it
    drafting = dict(alpha=[0.9] * 4, steps_since_probe=0)
    assert choose_draft_length([0.9, 0.9], 4, CPU, batch_size=4, **drafting) == \
        choose_draft_length([0.9, 0.9], 4, CPU, batch_size=4, min_gain=0.0, **drafting)


def test_the_lookup_bar_counts_the_speculative_paths_cost():
    """With a speculative path that costs c, a chain sent to a request in back-off on a step without a
    probe pays c alone: its first token needs more than kappa + kappa_0 / limit (kappa_0 = B c / T(B)),
    with the step's min_gain on top (((1 + g)(kappa limit + kappa_0) + g B) / limit), and the bar is tight
    (a chain whose later tokens are sure and whose first clears it is sent). Before, the bar was kappa:
    chains between the two were matched and decided every step, never sent."""
    b, limit = 16, 4
    kappa = b * CPU_SPEC.marginal(b) / CPU_SPEC.time(b)
    kappa_0 = b * CPU_SPEC.step_overhead / CPU_SPEC.time(b)
    g = AdaptiveDrafter(limit, limit, CPU_SPEC, online=False).min_gain
    bar = ((1 + g) * (kappa * limit + kappa_0) + g * b) / limit
    assert 0.5 < kappa < kappa + kappa_0 / limit < bar < 0.85

    def fresh(p1):
        dr = AdaptiveDrafter(limit, limit, CPU_SPEC, online=False)
        dr.tick()
        assert dr.decide("r", [], batch_size=b) == Decision(0, 0)  # new at batch 16: in back-off
        dr.tick()
        return dr, [p1] + [1.0] * (limit - 1)

    for p1, sent in ((kappa + 0.02, False), (bar - 0.01, False), (bar + 0.01, True)):
        dr, q = fresh(p1)
        assert dr.lookup_worth(q, b, req_id="r") == sent, p1
        assert dr.idle("r", b)  # no probe due: decide would charge the path's cost (tail 0)
        dr, q = fresh(p1)
        d = dr.decide("r", [], batch_size=b, lookup_q=q)
        assert (d.drafts > 0) == sent and d.tail == 0, (p1, d)
        assert dr.lookup_may_pay(b) and AdaptiveDrafter(limit, limit, CPU_SPEC, online=False).lookup_may_pay(b)
    # the calibration's best bucket between kappa and the bar: no suffix matches for requests in back-off
    dr, _ = fresh(0.0)
    for i in range(200):
        for bucket in range(10):
            dr.lookup_calibration.record(0, (bucket + 0.5) / 10, bucket == 9 and i % 100 < (kappa + bar) * 50)
    assert kappa < dr.lookup_calibration.estimate(0, 0.999) < bar
    no_path = AdaptiveDrafter(limit, limit, CPU, online=False)
    no_path.lookup_calibration = dr.lookup_calibration
    assert not dr.lookup_may_pay(b) and no_path.lookup_may_pay(b)  # with c = 0 the bar is kappa


def test_decisions_are_sized_for_a_ladder_of_batch_sizes():
    """The drafter sizes its decisions for the batch size rounded down to a rung (every size up to 8,
    then ~9% steps), so that one request finishing does not make a whole batch in back-off decide
    afresh: the shortcut holds while the batch stays on its rung."""
    assert [decision_batch(b) for b in (0, 1, 7, 8, 9, 15, 16, 63, 64, 68, 69)] == [1, 1, 7, 8, 9, 14, 16, 58, 64, 64, 69]
    rungs = sorted({decision_batch(b) for b in range(1, 5000)})
    assert all(decision_batch(r) == r for r in rungs)
    assert all(b / a <= 2 ** (1 / 8) + 2 / a for a, b in zip(rungs, rungs[1:]))  # ~9% apart (integers)
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    dr.tick()
    assert dr.decide("r", [], batch_size=64) == Decision(0, 0)  # new at batch 64: in back-off
    dr.tick()
    assert dr.idle("r", 64)
    dr.tick()
    assert dr.idle("r", 68)  # the same rung
    dr.tick()
    assert dr.idle("r", 63)  # the rung below, still in back-off there: the shortcut holds
    assert dr.states["r"].steady_memo[0][2] == 58
    dr.tick()
    assert not dr.idle("r", 2)  # at batch 2 its alpha (.5) pays for a draft: decide again
    assert dr.decide("r", [], batch_size=2).tail == 1


def test_lookup_may_pay_only_where_a_first_draft_beats_its_cost():
    """The batch-level test behind skipping the suffix match for requests in back-off: at batch 1 on
    this CPU a lookup draft pays if it is right more than ~8% of the time; at batch 32 only above ~88%
    (kappa = 32 T'(32) / T(32) ~.71, and the step's min_gain: 2% of 32 tokens over a 4-token chain);
    at batch 64 never (kappa ~.83 and the margin: more than 1). With the lookup calibration's best bucket
    accepted 70% of the time, batch 32 skips, batch 1 looks; where extra tokens are nearly free both look."""
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    assert dr.lookup_may_pay(1) and dr.lookup_may_pay(32)  # nothing observed: q itself, up to 1
    assert not dr.lookup_may_pay(64)  # not even a sure chain lifts a step of 64 by 2% on this CPU
    for i in range(200):
        for b in range(9):
            dr.lookup_calibration.record(0, (b + 0.5) / 10, False)   # buckets below 0.9: always rejected
        dr.lookup_calibration.record(0, 0.95, i % 10 < 7)           # the top one: accepted 70% of the time
    best = dr.lookup_calibration.estimate(0, 0.999)
    assert 0.65 < best < 0.75
    kappa32 = 32 * CPU.marginal(32) / CPU.time(32)
    assert best < kappa32 and not dr.lookup_may_pay(32) and dr.lookup_may_pay(1)
    assert not dr.lookup_may_pay(1, cap=0)
    # the bound holds: no lookup chain is sent to a request in back-off at batch 32 when it says no
    dr.tick()
    dr.decide("r", [], batch_size=32)
    assert dr.states["r"].steady_m == 0
    assert dr.decide("r", [], batch_size=32, lookup_q=[0.999] * 4).drafts == 0
    cheap = AdaptiveDrafter(4, 4, CHEAP, online=False)
    cheap.lookup_calibration = dr.lookup_calibration
    assert cheap.lookup_may_pay(32) and cheap.lookup_may_pay(64)


def test_lookup_backed_drafts_win_where_the_text_repeats():
    # SATs that cannot predict this text, a lookup candidate that is right 90% of the time
    sat_only = simulate([0.1] * 4, [0.3] * 4, CPU, 1)
    combined = simulate([0.1] * 4, [0.3] * 4, CPU, 1, lookup_accept=[0.9] * 4)
    assert sat_only >= 0.95 and combined > 1.5 * sat_only
    # a lookup candidate that is always wrong costs little: its calibration learns
    assert simulate([0.0] * 4, [0.2] * 4, CPU, 1, lookup_accept=[0.0] * 4) >= 0.9
    # ... also where the speculative path itself costs 20% of a step (sampled requests)
    for batch in (1, 4):
        assert simulate([0.0] * 4, [0.2] * 4, SAMPLED, batch, lookup_accept=[0.05] * 4) >= 0.95
    # and good SATs keep drafting where the lookup is poor
    assert simulate([0.8] * 4, [0.8] * 4, CPU, 1, lookup_accept=[0.1] * 4) > 1.4


def _lookup_run(dr, req: str, right: bool, steps: int = 100) -> int:
    """Lookup chains sent to `req` over `steps` steps at batch 1 (no SAT rows: the candidate is all
    there is), each one's first token accepted (right) or rejected; returns how many were sent."""
    sent = drafts = 0
    for _ in range(steps):
        dr.tick()
        d = dr.decide(req, [], verified_real=drafts or None, accepted=drafts if right else 0,
                      lookup_q=[0.75] * 4)
        drafts = d.drafts if d.lookup else 0
        sent += d.lookup
    return sent


def test_a_request_whose_lookup_chains_fail_stops_getting_them():
    """The lookup calibration is engine-wide: after greedy requests whose matches were right 70% of the
    time, a request whose matches are never right (sampled at temperature 1, results 18) is sent a few
    chains, not one a step: its own record weighs in (LOOKUP_REQUEST_WEIGHT), while a new request and
    one whose matches are right still get chains. Negative control: without the request's own record
    (a weight no record can move) it is sent chains on most steps."""
    def drafter(weight=None):
        dr = AdaptiveDrafter(4, 4, CPU, online=False)
        if weight is not None:
            dr.LOOKUP_REQUEST_WEIGHT = weight
        for i in range(300):  # the greedy requests before: first tokens right 7 times in 10
            dr.lookup_calibration.record_step([0.75] * 4, 4 if i % 10 < 7 else 0)
        return dr

    dr = drafter()
    wrong = _lookup_run(dr, "sampled", right=False)
    assert 3 <= wrong <= 15, wrong
    assert dr.lookup_calibration.estimate(0, 0.75) > 0.55  # the engine-wide figure barely moved ...
    dr.tick()
    assert dr.decide("new", [], lookup_q=[0.75] * 4).lookup  # ... so a new request still gets a chain
    assert _lookup_run(dr, "greedy", right=True) >= 30      # and one whose matches are right keeps them
    st = dr.states["sampled"]
    assert st.lookup_offered == wrong and st.lookup_accepted == 0
    # lookup_worth (the proposer's shortcut) reads the same record: at batch 16 the bar is between them
    kappa16 = 16 * CPU.marginal(16) / CPU.time(16)
    assert dr._lookup_estimates([0.75], st)[0] < kappa16 < dr._lookup_estimates([0.75], dr.states["new"])[0]
    assert not dr.lookup_worth([0.75] * 4, 16, req_id="sampled") and dr.lookup_worth([0.75] * 4, 16, req_id="new")
    assert _lookup_run(drafter(weight=1e12), "sampled", right=False) > 3 * wrong


def test_the_chain_with_more_expected_accepted_tokens_is_sent():
    dr = AdaptiveDrafter(4, 4, CHEAP, online=False)
    d = dr.decide("r", [0.3] * 4, lookup_q=[0.9] * 4)
    assert d.lookup and d.drafts == 4
    d = dr.decide("s", [0.9] * 4, lookup_q=[0.3] * 4)
    assert not d.lookup and d.drafts == 4
    # lookup drafts are calibrated apart: rejecting them does not touch the SAT calibration
    for _ in range(30):
        dr.decide("r", [0.3] * 4, verified_real=4, accepted=0, lookup_q=[0.9] * 4)
    assert dr.lookup_calibration.estimate(0, 0.9) < 0.5 and dr.calibration.estimate(0, 0.9) == pytest.approx(0.9)
    assert not dr.decide("r", [0.5] * 4, lookup_q=[0.9] * 4).lookup
    assert expected_accepted([0.5, 0.5]) == pytest.approx(0.75)


def test_pick_lookup_takes_the_candidate_with_the_larger_calibrated_expectation():
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    assert dr.pick_lookup([]) is None
    assert dr.pick_lookup([[0.9, 0.1], [0.6, 0.6, 0.6]]) == 1          # 0.96 vs 1.18 expected tokens
    # the lookup calibration has learnt that confident first tokens are wrong: the other one wins
    for _ in range(40):
        dr.lookup_calibration.record_step([0.95, 0.9], 0)
    assert dr.pick_lookup([[0.95, 0.9, 0.9], [0.45, 0.4]]) == 1


def test_new_requests_start_in_back_off_where_drafting_does_not_pay():
    """A new request probes at once where the engine-wide acceptance says drafting pays (batch 1 on
    this cost model), and otherwise starts in back-off: its first probe comes once it has lived k
    steps (the probe interval), on the engine's probe steps. Under load a stream of requests shorter
    than k then adds no SAT row at all (a probe would cost them more than the budget of their whole
    life), and longer ones probe together."""
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    assert best_steady_state(dr.alpha_global, 4, CPU, 1).m > 0 and dr.decide("first", []).probe
    assert best_steady_state(dr.alpha_global, 4, CPU, 8).m == 0
    k = probe_interval(4, CPU, 8, budget=dr.probe_budget)
    every = max(k // 4, 1)
    for life in (k - 2, 2 * k):  # decisions per request: a probe goes out with its (k-1)-th at the earliest
        dr = AdaptiveDrafter(4, 4, CPU, online=False)
        born: dict[str, int] = {}
        tails: dict[str, int] = {}
        first_probe: dict[str, int] = {}
        for step in range(3 * k):
            dr.tick()
            if step % every == 0:
                born[f"r{step}"] = step
            live = [r for r, b in born.items() if step - b < life]
            dr.keep_only(live)
            for r in live:  # a batch of 8 of which these are followed; SATs that are always wrong
                d = dr.decide(r, [0.05] * tails.get(r, 0), batch_size=8)
                tails[r] = d.tail
                if d.tail:
                    assert d.probe and d.drafts == 0
                    # the engine's probe steps only (clock + 1 divisible by k; the clock reads step + 1)
                    assert (step + 2) % k == 0
                    first_probe.setdefault(r, step)
        if life < k:
            assert not first_probe  # nobody lives long enough to pay for a probe
        else:
            assert first_probe and all(s - born[r] >= k - 2 for r, s in first_probe.items())
            # every request that lived k steps past an engine probe step probed there
            assert len(first_probe) >= len([r for r, b in born.items() if b + 2 * k <= 3 * k - 1]) > 0


def test_drafter_forgets_finished_requests_and_new_ones_probe():
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    assert dr.decide("a", []).probe
    dr.decide("b", [])
    dr.keep_only(["b"])
    assert set(dr.states) == {"b"}


# ---------------------------------------------------------------- options


def test_datastore_chains_have_their_own_calibration():
    """A datastore chain's outcome is recorded in the datastore calibration, a text match's in the
    lookup calibration: once datastore chains at q .55 are seen rejected, a datastore candidate at .55
    loses to a text one at .5 (one shared calibration would score both by the same bucket)."""
    dr = AdaptiveDrafter(4, 4, CostModel.linear(0.0), online=False)
    assert dr.decide("r", [], lookup_q=[0.55, 0.55], lookup_source="datastore").lookup
    assert dr.states["r"].sent_source == "datastore"
    dr.decide("r", [], verified_real=2, accepted=0)
    assert dr.datastore_calibration.offered[0][5] == 1 and dr.datastore_calibration.accepted[0][5] == 0
    assert sum(map(sum, dr.lookup_calibration.offered)) == 0
    for _ in range(20):
        dr.datastore_calibration.record(0, 0.55, False)
    assert dr.pick_lookup([[0.55, 0.55], [0.5, 0.5]], ["datastore", "text"]) == 1
    assert dr.pick_lookup([[0.55, 0.55], [0.5, 0.5]]) == 0  # both "text": the higher q wins
    with pytest.raises(ValueError, match="lookup source"):
        dr.lookup_calibration_of("web")
    # in back-off a datastore chain's q is at most the longest prior: its unseen buckets above cannot
    # make a lookup look worth a suffix match (lookup_may_pay), and only where there is a datastore
    cpu = AdaptiveDrafter(4, 4, CPU, online=False)
    for i in range(200):
        for b in range(10):
            cpu.lookup_calibration.record(0, (b + 0.5) / 10, False)
    assert not cpu.lookup_may_pay(16)
    cpu.has_datastore = True
    assert cpu.lookup_may_pay(16) == (max(lookup.DATASTORE_PRIOR_BY_NGRAM) > cpu._lookup_bar(16, 4))
    assert cpu.lookup_may_pay(1)


# ---------------------------------------------------------------- lookups skipped in back-off


def test_a_request_in_back_off_skips_suffix_matches_that_cannot_pay():
    """At batch 16 on the CPU cost model (a bar of ~.64: kappa ~.55, the step's min_gain) and an empty
    lookup calibration (estimate = q), a prior-only chain pays from a 3-token match (q .65) on: a request
    whose match was 1 token long (or none) cannot have one before 2 (3) more tokens, so it skips that many
    steps' suffix matches; 2 tokens long: it looks again at the next step; at batch 32 (a bar of ~.88)
    only 6-token matches pay; where none can (batch 64), it waits LOOKUP_RECHECK steps."""
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    dr.states["r"] = policy.RequestState(alpha=[0.1] * 4)
    assert lookup_prior_q(2) < dr._lookup_bar(16, 4) < lookup_prior_q(3)
    assert lookup_prior_q(5) < dr._lookup_bar(32, 4) < lookup_prior_q(6)
    for longest, batch, waits in ((1, 16, 2), (0, 16, 3), (2, 16, 1), (3, 16, 1), (2, 32, 4), (0, 32, 6),
                                  (9, 32, 1), (0, 64, AdaptiveDrafter.LOOKUP_RECHECK),
                                  (0, 1024, AdaptiveDrafter.LOOKUP_RECHECK)):
        start = dr.clock
        dr.note_lookup_miss("r", longest, batch)
        due = []
        for _ in range(8):
            dr.tick()
            due.append(dr.lookup_due("r"))
        assert due.index(True) + 1 == waits, (longest, batch, due)
        assert dr.clock - start == 8
    assert dr.lookup_due("new request")


def test_decision_gain_is_the_chains_expected_net():
    """Decision.gain: the drafts' expected accepted tokens less their cost in tokens (the ledger's worth);
    back-off at batch 1 on the linear CPU cost: kappa = T'(1) / T(1) per draft."""
    kappa = CPU.marginal(1) / CPU.time(1)
    d = choose_draft_length([0.9, 0.8], 4, CPU, alpha=[0.0] * 4, batch_size=1)
    assert d.drafts == 2 and d.tail == 0
    assert d.gain == pytest.approx(0.9 + 0.9 * 0.8 - 2 * kappa)
    assert choose_draft_length([], 4, CPU, alpha=[0.0] * 4).gain == 0.0
    assert d == Decision(2, 0)  # not part of a decision's identity


def test_the_ledger_verdict_stretches_the_skip():
    dr = AdaptiveDrafter(4, 4, CPU, online=True)
    dr.alpha_global = [0.0] * 4                     # SATs never right: a new request starts in back-off
    dr.tick()
    dr.decide("r", [], batch_size=1)
    assert dr.may_idle("r")
    dr.note_lookup_miss("r", 0, 1)
    base = dr.states["r"].lookup_after - dr.clock
    dr.ledger(1).stride = LookupLedger.STRIDE_OFF
    dr.note_lookup_miss("r", 0, 1)
    assert dr.states["r"].lookup_after - dr.clock == base * LookupLedger.STRIDE_OFF
    dr.note_lookups(LookupLedger.WINDOW, 0.05, 20.0, 1)  # no plain step timed yet: no verdict
    assert dr.ledger(1).stride == LookupLedger.STRIDE_OFF
    # a plain step's seconds per request are the ledger's token time, per batch rung
    dr.observe_step(16, 0.08, speculative=False, requests=16)
    dr.observe_step(16, 0.12, speculative=False, requests=16)
    assert dr.token_seconds[16] == pytest.approx(0.005 + AdaptiveDrafter.TOKEN_SECONDS_STEP * 0.0025)
    dr.note_lookups(LookupLedger.WINDOW, 0.05, 20.0, 16)  # 10 tokens spent at 16, 20 worth: every step
    assert dr.ledger(16).stride == 1
    dr.note_lookups(LookupLedger.WINDOW, 0.05, 3.0, 16)   # 3, under half of 10
    assert dr.ledger(16).stride == LookupLedger.STRIDE_OFF
    assert AdaptiveDrafter(4, 4, CPU, online=False).ledger(1) is None  # a cost the user fixed: no ledger


def test_the_skip_follows_the_calibration_and_the_request_record():
    """note_lookup_miss keeps what it works out per batch rung until the lookup calibration, the request's
    own record of chains or the cost model move: each of them changes the skip at once."""
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    dr.states["r"] = policy.RequestState(alpha=[0.1] * 4)

    def waits(longest=1, batch=16):
        dr.note_lookup_miss("r", longest, batch)
        return dr.states["r"].lookup_after - dr.clock

    assert waits() == 2  # a 3-token match pays at 16 (the test above)
    for _ in range(200):  # text matches turn out always wrong: no match length can pay
        for b in range(10):
            dr.lookup_calibration.record(0, (b + 0.5) / 10, False)
    assert waits() == AdaptiveDrafter.LOOKUP_RECHECK
    st = dr.states["r"]
    st.lookup_offered, st.lookup_accepted = 40, 40  # ... but this request's own chains always were right
    assert waits() == 1
    cheap = AdaptiveDrafter(4, 4, CHEAP, online=False)  # another drafter, its own calibration: not the cache
    cheap.states["r"] = policy.RequestState(alpha=[0.1] * 4)
    cheap.lookup_calibration = dr.lookup_calibration
    cheap.note_lookup_miss("r", 1, 16)
    assert cheap.states["r"].lookup_after - cheap.clock == AdaptiveDrafter.LOOKUP_RECHECK


@pytest.mark.parametrize("cost", [CPU, CPU_SPEC], ids=["c0", "c"])
def test_skipping_suffix_matches_in_back_off_loses_no_chain_worth_sending(cost):
    """A request in back-off over a long text, fresh tokens with now and then a passage copied from
    earlier: at batch 16 and 32 every step on which a suffix match would pass lookup_worth is still
    looked up on (the skip only drops steps that cannot pass), with fewer suffix matches (at 32, where
    only 6-token matches pay, under half); with a speculative path that costs c, at batch 8 and 16.
    Calibration, record and kappa held fixed, as the skip assumes."""
    rng = random.Random(1)
    text = []
    while len(text) < 2000:
        if len(text) > 100 and rng.random() < 0.05:
            start = rng.randrange(len(text) - 20)
            text.extend(text[start:start + 10])
        else:
            text.append(rng.randrange(50))
    for batch, most in ((16, 0.8), (32, 0.5)) if cost is CPU else ((8, 0.8), (16, 0.8)):
        dr = AdaptiveDrafter(4, 4, cost, online=False)
        dr.states["r"] = policy.RequestState(alpha=[0.1] * 4)

        def worth(t):
            m = suffix_match(text[:t], 4)
            q = score_lookup(m.ngram, [], len(m.tokens)) if m is not None else None
            return (m.ngram if m is not None else 0), q is not None and dr.lookup_worth(q, batch, 4, "r")

        every_step = {t for t in range(50, len(text)) if worth(t)[1]}
        found, looked = set(), 0
        for t in range(50, len(text)):
            dr.tick()
            if not dr.lookup_due("r"):
                continue
            looked += 1
            longest, ok = worth(t)
            if ok:
                found.add(t)
            else:
                dr.note_lookup_miss("r", longest, batch)
        assert found == every_step and len(every_step) > 100, batch
        assert looked < most * (len(text) - 50), (batch, looked)


def test_the_back_off_skip_counts_datastore_matches_where_there_is_a_datastore():
    """note_lookup_miss's shortest passing match length looks at the datastore's calibration too: once
    2-token datastore matches (prior .35) are seen always accepted, a request at batch 16 with no match
    looks again after 2 steps, not the 3 a 3-token text match needs."""
    dr = AdaptiveDrafter(4, 4, CPU, online=False)
    dr.states["r"] = policy.RequestState(alpha=[0.1] * 4)
    for _ in range(100):
        dr.datastore_calibration.record(0, lookup.DATASTORE_PRIOR_BY_NGRAM[2], True)

    def waits() -> int:
        dr.note_lookup_miss("r", 0, 16)
        for k in range(1, 9):
            dr.tick()
            if dr.lookup_due("r"):
                return k
        return 0

    assert waits() == 3
    dr.has_datastore = True
    assert waits() == 2
