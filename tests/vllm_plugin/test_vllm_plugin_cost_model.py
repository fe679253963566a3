"""Fast tests: the cost model the drafting policy prices tokens with (sdsat_vllm/vllm_plugin/cost_model.py):
the priors, the online fit from an engine's steps and batch 1's step times (pure Python, hand-built steps)."""

import random

import pytest

from sdsat_vllm.vllm_plugin import cost_model
from sdsat_vllm.vllm_plugin.cost_model import (CostModel, OnlineCost, StepTimes, device_default, fit_local_linear,
                                               sampling_overhead)
from sdsat_vllm.vllm_plugin.policy import probe_interval

CPU = CostModel.linear(0.075)      # the 2-core VM of issue 13: an 11-token forward costs 1.7x a 1-token one
# seeded sampled requests on this CPU (results 11.1): a step on the speculative path costs 20% more
SAMPLED = CostModel.linear(0.06, step_overhead=0.2)

#: (N, ms) of 41 plain steps at batch 61-65 in vLLM's three-process engine (benchmarks/results 17.1):
#: N moves by a few percent as requests finish while the step time drifts
MP_BATCH_64_STEPS = [(65, 280), (64, 247), (64, 268), (64, 261), (64, 255), (64, 257), (64, 258), (64, 247),
                     (64, 243), (64, 262), (64, 264), (64, 263), (64, 255), (64, 255), (64, 258), (64, 261),
                     (64, 258), (64, 245), (64, 246), (64, 249), (64, 242), (64, 250), (64, 256), (64, 267),
                     (64, 236), (64, 244), (64, 241), (64, 251), (64, 254), (63, 254), (63, 242), (62, 255),
                     (62, 252), (62, 250), (62, 236), (62, 252), (62, 272), (62, 254), (62, 265), (61, 260), (61, 260)]


def test_cost_model_linear_and_piecewise():
    c = CostModel.linear(0.5, fixed=2.0)
    assert c.time(0) == 2.0 and c.time(4) == 4.0 and c.marginal(10) == 0.5
    k = CostModel(((0, 1.0), (10, 1.1), (20, 3.1)))
    assert k.time(5) == pytest.approx(1.05) and k.marginal(5) == pytest.approx(0.01)
    assert k.time(30) == pytest.approx(5.1) and k.marginal(100) == pytest.approx(0.2)  # last slope extends
    assert device_default("cpu") is not device_default("cuda")
    assert device_default("cpu").marginal(1) > device_default("cuda").marginal(1)


def test_cost_model_refuses_nonsense():
    with pytest.raises(ValueError):
        CostModel(((0, 1.0),))
    with pytest.raises(ValueError):
        CostModel(((2, 1.0), (1, 2.0)))
    with pytest.raises(ValueError):
        CostModel.linear(-0.1)
    with pytest.raises(ValueError, match="sdsat cost"):
        CostModel.from_option("fast")
    assert CostModel.from_option(0.2).marginal(3) == pytest.approx(0.2)
    assert CostModel.from_option([[1, 1.0], [11, 1.7]]).time(11) == pytest.approx(1.7)


def test_online_fit_recovers_the_slope_and_drops_idle_gaps():
    rng = random.Random(0)
    pts = [(n, 2.0 + 0.3 * n + rng.gauss(0, 0.02)) for n in [1, 5, 9, 13, 20] * 12]
    pts += [(5, 500.0), (1, 900.0)]  # the engine idled between requests
    m = fit_local_linear(pts, prior=CostModel.linear(0.01))
    assert m.marginal(5) / m.time(0) == pytest.approx(0.15, rel=0.1)
    # N never varies: nothing to fit a slope from, the prior's shape stays
    flat = fit_local_linear([(6, 1.3 + rng.gauss(0, 0.01)) for _ in range(50)], prior=CPU)
    assert flat.marginal(6) / flat.time(6) == pytest.approx(CPU.marginal(6) / CPU.time(6), rel=0.05)
    assert fit_local_linear(pts[:3], prior=CPU) is CPU  # too few samples


def test_online_fit_takes_no_slope_from_a_narrow_window(monkeypatch):
    pts = [(n, ms / 1000, False) for n, ms in MP_BATCH_64_STEPS]
    prior_rel = CPU.marginal(62) / CPU.time(62)
    m = fit_local_linear(pts, prior=CPU)
    # the prior's shape at the measured level: a probe of every request costs what the prior says
    assert m.marginal(62) / m.time(62) == pytest.approx(prior_rel, rel=0.02)
    assert m.time(62) == pytest.approx(0.254, rel=0.03)
    assert probe_interval(5, m, 61) >= 100
    # negative control: fitted as if the window's spread meant something, the slope falls to a
    # fraction of the prior's and every request of the batch probes within 40 steps
    monkeypatch.setattr(cost_model, "MIN_N_SPREAD", 0.0)
    loose = fit_local_linear(pts, prior=CPU)
    assert loose.marginal(62) / loose.time(62) < 0.5 * prior_rel
    assert probe_interval(5, loose, 61) < 50


def test_online_fit_separates_the_speculative_path():
    # batch 1 as in an engine: plain steps all N = 1, speculative ones N = 2..11; a step on the
    # speculative path costs 0.8 more (the rejection sampler) besides its tokens
    rng = random.Random(1)
    plain = [(1, 2.0 + 0.3 + rng.gauss(0, 0.02), False) for _ in range(40)]
    spec = [(n, 2.0 + 0.3 * n + 0.8 + rng.gauss(0, 0.02), True) for n in [2, 3, 6, 11] * 10]
    m = fit_local_linear(plain + spec, prior=CPU)
    assert m.step_overhead == pytest.approx(0.8, abs=0.05)
    assert m.marginal(5) == pytest.approx(0.3, rel=0.1) and m.time(1) == pytest.approx(2.3, rel=0.02)
    assert m.time(6, speculative=True) == pytest.approx(2.0 + 1.8 + 0.8, rel=0.02)
    # a single kind (or pairs without it) says nothing about c: the prior's stays
    assert fit_local_linear(spec, prior=SAMPLED).step_overhead == SAMPLED.step_overhead
    assert fit_local_linear([(n, y) for n, y, _ in spec], prior=CPU).step_overhead == 0.0
    assert fit_local_linear(plain[:5] + spec, prior=CPU).step_overhead == 0.0  # too few plain steps
    with pytest.raises(ValueError):
        CostModel.linear(0.1, step_overhead=-1.0)


def test_online_cost_keeps_the_last_measured_c_when_nothing_drafts():
    """A window with both kinds of step measures c; when later steps are all plain (a large batch in
    back-off sends no probe) c stays the last measured, not the prior's (0 on the CPU model), so that
    lookup chains do not look cheap again once the speculative steps have left the window. Control:
    a cost model that has never seen a speculative step keeps the prior's c."""
    rng = random.Random(3)
    online = OnlineCost(CPU, window=64, refit_every=8)
    for i in range(64):
        spec = i % 4 == 0
        online.add(64 + (5 if spec else 0), 6.0 + 0.3 * (5 if spec else 0) + (1.5 if spec else 0.0) + rng.gauss(0, 0.01),
                   speculative=spec)
    measured = online.model().step_overhead
    assert measured > 1.0  # the path's 1.5 (and part of the 5 tokens: N spreads too little for a slope)
    for _ in range(200):  # nothing drafts any more: the window fills with plain steps
        online.add(64, 6.0 + rng.gauss(0, 0.01), speculative=False)
    assert all(not s[2] for s in online.samples)
    assert online.model().step_overhead == pytest.approx(measured, rel=0.05)  # the last fit with both kinds
    assert online.model().time(64) == pytest.approx(6.0, rel=0.01)
    fresh = OnlineCost(CPU, window=64, refit_every=8)
    for _ in range(64):
        fresh.add(64, 6.0 + rng.gauss(0, 0.01), speculative=False)
    assert fresh.model().step_overhead == CPU.step_overhead == 0.0


def test_online_fit_takes_the_speculative_paths_cost_from_the_sampling_half():
    """At batch 64 on a 2-core CPU the whole steps drift by more than the speculative path costs
    (results 21): fitted from whole steps, c came out at a fraction of what the rejection sampler cost.
    The sampling half (logits to proposal) shows it with little noise: c is at least what it says
    (its per-row cost taken out), and an OnlineCost fed both gets there."""
    rng = random.Random(2)
    # the machine ran 8 ms a step faster while the speculative steps ran (they come in bursts), more
    # than the path's 3.3 ms; the sampling half does not drift with the forward
    plain = [(64, 0.180 + rng.gauss(0.004, 0.002), False, 0.0035 + rng.gauss(0, 0.0002)) for _ in range(60)]
    spec = [(n, 0.180 + 0.002 * (n - 64) + rng.gauss(-0.004, 0.002) + 0.00015 * (n - 64) + 0.0033, True,
             0.0035 + 0.00015 * (n - 64) + 0.0033 + rng.gauss(0, 0.0002)) for n in [66, 70, 75, 90, 110] * 8]
    assert sampling_overhead(plain + spec) == pytest.approx(0.0033, abs=0.0003)
    whole = fit_local_linear([pt[:3] for pt in plain + spec], prior=CPU).step_overhead
    assert whole < 0.001  # from whole steps: the path looks nearly free
    both = fit_local_linear(plain + spec, prior=CPU).step_overhead
    assert both == pytest.approx(sampling_overhead(plain + spec))
    # untimed steps (None) and too few timed ones of a kind leave the whole-step fit alone
    untimed = [(n, y, s, None) for n, y, s, _ in spec]
    assert sampling_overhead(plain + untimed) is None
    assert fit_local_linear(plain + untimed, prior=CPU).step_overhead == pytest.approx(whole)
    assert sampling_overhead(plain[:5] + spec) is None
    online = OnlineCost(CPU, window=256, refit_every=8)
    for n, y, s, samp in plain + spec:
        online.add(n, y, s, samp)
    assert online.model().step_overhead >= 0.003
    online.add(64, 0.18, False, 0.5)  # a sampling time longer than its step: not this step's, dropped
    assert online.samples[-1][3] is None


def test_online_cost_fits_the_slope_of_the_batch_the_step_joins():
    """On a CPU T(N) bends upwards (the weights are streamed once for the first few tokens, every
    token is computed after that). As measured in an engine at batch 16 (results 27): plain steps of a
    draining batch (1-15 requests) cost ~38 ms + 0.9 ms a token, the full batch's ~52 ms at N = 16 and
    2.1 ms a token more above. A window holding both is fitted at the newest step's batch from that
    batch's steps: the slope they show, where a line through all of them reads ~40% less. Control: the
    same steps without their batch sizes. A batch with too few steps of its own in the window is
    fitted from all of them."""
    rng = random.Random(5)

    def t(n):  # seconds
        return (0.038 + 0.0009 * n if n <= 16 else 0.0524 + 0.0021 * (n - 16)) + rng.gauss(0, 0.0005)

    draining = [(r, t(r), False, None, r) for r in range(15, 0, -1) for _ in range(4)]
    full = [(16, t(16), False, None, 16) for _ in range(60)] + \
           [(n, t(n), True, None, 16) for n in [17, 21, 26, 31] * 10]

    def slope(samples, with_requests=True):
        online = OnlineCost(CPU, window=256, refit_every=1)
        for n, y, s, samp, r in samples:
            online.add(n, y, s, samp, r if with_requests else None)
        return online.model().marginal(16)

    assert slope(draining + full) == pytest.approx(0.0021, rel=0.1)
    assert slope(draining + full, with_requests=False) < 0.7 * 0.0021
    # the newest step is of a batch of 3, of which the window holds 4 steps: every step is fitted
    dip = draining + full + [(3, t(3), False, None, 3)]
    assert slope(dip) == pytest.approx(slope(dip, with_requests=False))


def test_step_times_keep_a_median_per_size():
    t = StepTimes()
    for x in (0.030, 0.031, 0.029, 0.5, 0.030):  # an idle gap among them: the median ignores it
        t.add(2, x)
    assert t.time(2) == pytest.approx(0.030)
    for x in (0.03,) * (StepTimes.MIN_SAMPLES - 1):
        t.add(3, x)
    assert t.time(3) is None and t.time(4) is None  # too few, none
    t.add(StepTimes.MAX_TOKENS + 1, 0.03)
    t.add(2.5, 0.03)
    t.add(5, float("nan"))
    assert set(t._times) == {2, 3}
