"""SDSAT's drafting policy: how many real drafts a request sends, and how long a SAT tail, per step.

Pure Python (no torch, no vLLM): the proposer feeds it numbers, the tests feed it hand-built ones.
docs/design.md, section 4.5 has the derivation; in short:

* A verify forward of a request carries ``[x, d_1..d_m, S_1..S_t]``. The m real drafts come from
  the SAT rows of the previous forward (so m <= the tail that forward had); the t SATs draft the
  next step's drafts. A rejected draft makes the SAT rows stale: the next forward has no drafts.
* ``p_i`` is the estimated chance that draft i is accepted given drafts 1..i-1 were: the softmax
  max probability of the SAT row that drafted it (its argmax is the draft), calibrated against the
  acceptances seen so far (:class:`AcceptanceCalibration`). ``g_i = p_1 * ... * p_i`` is the
  chance that draft i gets committed; the expected committed tokens of the step are
  ``1 + g_1 + ... + g_m``.
* The cost model (cost_model.py, :class:`CostModel`) is the time of one forward of the whole batch as a function
  of the total tokens in it, T(N), plus ``c``, what a step costs more when it goes through vLLM's
  speculative path at all (any draft or SAT in it: the rejection sampler, one logit row per
  token; measured on this CPU: ~0 for greedy requests, 4-20% of a step for seeded sampled ones).
  Only its shape matters (the policy is scale-free): the relative cost of a token at N is
  T'(N) / T(N). It is measured online from the engine's own steps (:class:`OnlineCost`), with a
  per-device default as its prior, or fixed by the user.
* **Tail** (``t``): sized to what the next step can use. From a request's running per-position
  acceptance ``alpha`` the policy computes the best steady-state draft count m* (each step sends
  m* drafts with an m* tail; after a rejection a step sends none, with the tail), counting the
  batch: B requests all doing the same make the forward ``B * nu(m)`` tokens long. The tail is
  m*. When m* = 0 (speculation does not pay for this request at this batch size) the tail is 0 and
  the request decodes plainly. Every k steps the tail is the full n instead (a *probe*), so that
  alpha stays current at every position (a request in back-off gets its only SAT rows from probes);
  k is chosen so that probing costs at most ``probe_budget`` (3%) of the forward, and doubles
  (up to 8 times) after each probe that left m* where it was: a request whose plan the probes keep
  confirming pays for them less and less. The doubling is engine-wide too: the engine's probe steps
  are those of its own back-off, which new requests inherit (and then do not probe first), and which
  starts afresh when a request's SAT rows move its plan. A probe comes only after k steps since the last one, a
  new request's first included (:func:`probe_due`): a request shorter than k never pays for one.
  No probes at a batch size where SAT drafts could not pay even if every one were accepted (there
  no alpha could change the plan; :meth:`AdaptiveDrafter._batch_level`).
* **Batch size**: the drafter sizes its decisions for the batch rounded down to a rung of ~9% steps
  (cost_model.decision_batch), so that under load a request in back-off keeps its decision (and skips
  the policy, :meth:`AdaptiveDrafter.idle`) while requests come and go.
* **Drafts** (``m``): with the drafts in hand and their p, maximise
  ``g_1 + ... + g_m - kappa * m - kappa_0 + g_m * W``, where ``kappa`` is what one more token in
  this forward costs, in tokens (the steady-state rate times T'(N)), ``kappa_0`` the rate times c
  when the drafts alone would put the step on the speculative path (no tail), and W is what the
  next step's fresh drafts are worth (lost if any draft of this step is rejected; 0 when the tail
  is 0), less what a step without them commits with the lookup chains it sends (:class:`StaleSteps`).
  A step that is plain unless drafts are sent (a request in back-off, no probe: a lookup chain) must
  gain ``min_gain`` with them, as drafting must: the score less ``min_gain * (B + cost)``.
* **A doubtful chain goes without its tail**: the tail drafts the next step only if every draft sent
  now is accepted (chance g_m), so m drafts without it score ``g_1 + ... + g_m`` less their own cost
  (the tail's saved), against the same with the tail's cost and ``g_m * W``; the better is sent. A
  probe keeps its tail (it serves the estimates), and so does a step without drafts (its only way
  back to fresh rows). Replayed on norepeat and HumanEval at the CPU's cost (results 39.1), m* was 1
  and 84-94% of the steps went without that one SAT, nearly all of them sending a lookup chain.
* **Step sizes at batch 1** (cost_model.StepTimes): where the measured time of a step of N tokens is
  known, drafts are priced by what the step's time grows by, and the tail grows while the step costs
  no more (on a CPU a step of 3-6 tokens can cost less than one of 2).
* **Lookup-backed drafts** (option ``lookup``): a continuation of the request's own suffix found
  earlier in its text (lookup.py, :func:`suffix_match`), each token scored with the fresh SAT row's
  probability of it combined with a prior by the length of the match (:func:`score_lookup`) and
  calibrated on its own; the chain with the larger expected accepted length
  (:func:`expected_accepted`) is drafted from. A second candidate starts with the first SAT draft
  and continues with the lookup after it (the SATs are best at their first position).
* **Worst case** (drafts never accepted): the calibration drives p to 0 and alpha with it, m* = 0,
  so the request runs plain forwards plus a probe every k to 8k steps: within ``probe_budget`` of
  plain decoding, plus the few drafts sent before the calibration learned.

vLLM's dynamic speculative decoding (``num_speculative_tokens_per_batch_size``) gives one
speculative-token count per batch size; the proposer takes it as a cap on both m and the tail
(``cap``). It cannot size SDSAT's step by itself: vLLM counts every speculative token as a draft,
while an SDSAT step is drafts *and* a SAT tail whose length must follow the next step's draft
count, not this one's, and its count is per batch size, not per request or per step.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from .cost_model import CostModel, OnlineCost, StepTimes, decision_batch
from .lookup import DATASTORE_PRIOR_BY_NGRAM, LOOKUP_PRIOR_BY_NGRAM, LOOKUP_SOURCES, LookupLedger
from .options import DEFAULT_OPTIONS


# --------------------------------------------------------------------------------------------
# acceptance estimates


_CALIBRATION_STAMPS = itertools.count()


class AcceptanceCalibration:
    """P(draft at position i accepted | drafts before it accepted, its SAT row's max probability q).

    Counts per position and q bucket (tenths), with ``prior_weight`` pseudo-observations at q
    itself: an unseen bucket returns q, a well-observed one the observed rate.
    """

    def __init__(self, num_positions: int, buckets: int = 10, prior_weight: float = 4.0):
        self.buckets = buckets
        self.prior_weight = prior_weight
        self.offered = [[0] * buckets for _ in range(num_positions)]
        self.accepted = [[0] * buckets for _ in range(num_positions)]
        # a stamp no other state of any calibration has: figures derived from the estimates are cached by it
        self.version = next(_CALIBRATION_STAMPS)

    def _bucket(self, q: float) -> int:
        return min(self.buckets - 1, max(0, int(q * self.buckets)))

    def record(self, position: int, q: float, accepted: bool) -> None:
        """position: 0-based draft position."""
        if 0 <= position < len(self.offered):
            b = self._bucket(q)
            self.offered[position][b] += 1
            self.accepted[position][b] += int(accepted)
            self.version = next(_CALIBRATION_STAMPS)

    def record_step(self, qs: Sequence[float], num_accepted: int) -> None:
        """A verified chain with SAT probabilities qs, of which the first num_accepted were accepted:
        positions up to the first rejection were reached, the ones after it tell nothing."""
        for i, q in enumerate(qs[: num_accepted + 1]):
            self.record(i, q, i < num_accepted)

    def estimate(self, position: int, q: float) -> float:
        q = min(max(float(q), 0.0), 1.0)
        if not 0 <= position < len(self.offered):
            return q
        b = self._bucket(q)
        off, acc = self.offered[position][b], self.accepted[position][b]
        return (acc + self.prior_weight * q) / (off + self.prior_weight)

    def estimates(self, qs: Sequence[float]) -> list[float]:
        return [self.estimate(i, q) for i, q in enumerate(qs)]


# --------------------------------------------------------------------------------------------
# the policy


def chain_gains(p: Sequence[float]) -> list[float]:
    """g_i = p_1 * ... * p_i: the chance that draft i is committed."""
    out, g = [], 1.0
    for x in p:
        g *= min(max(float(x), 0.0), 1.0)
        out.append(g)
    return out


@dataclass(frozen=True)
class SteadyState:
    """A request that sends m drafts with an m-SAT tail each step (and no drafts, with the tail,
    after a rejection), in a batch of B such requests."""

    m: int
    tokens_per_step: float      # committed tokens per forward of this request
    tokens_in_forward: float    # its tokens per forward (1 + drafts + tail)
    batch_tokens: float         # B * tokens_in_forward: N of the forward
    throughput: float           # B * tokens_per_step / T(N): the batch's committed tokens per unit time
    all_accepted: float         # A = g_m


def steady_state(alpha: Sequence[float], m: int, cost: CostModel, batch_size: int = 1) -> SteadyState:
    """The long-run figures of drafting m per step with an m tail (m = 0: plain decoding).

    Two states: D (fresh drafts in hand: [x, d_1..d_m, S_1..S_m], E = 1 + g_1 + .. + g_m tokens,
    back to D with probability A = g_m) and S (after a rejection: [y, S_1..S_m], 1 token, then D).
    Stationary: pi_D = 1 / (2 - A), pi_S = (1 - A) / (2 - A). Every step of m > 0 carries SATs, so
    it is on the speculative path (T(N) + c).
    """
    b = max(int(batch_size), 1)
    g = chain_gains(alpha[:m])
    if m <= 0:
        a, tok, nu = 1.0, 1.0, 1.0
    else:
        a = g[-1] if len(g) == m else 0.0
        e_d = 1.0 + sum(g)
        pi_d = 1.0 / (2.0 - a)
        pi_s = (1.0 - a) * pi_d
        tok = pi_d * e_d + pi_s
        nu = pi_d * (1 + 2 * m) + pi_s * (1 + m)
    n_tokens = b * nu
    return SteadyState(m=m, tokens_per_step=tok, tokens_in_forward=nu, batch_tokens=n_tokens,
                       throughput=b * tok / cost.time(n_tokens, speculative=m > 0), all_accepted=a)


def best_steady_state(alpha: Sequence[float], n: int, cost: CostModel, batch_size: int = 1,
                      min_gain: float = 0.02) -> SteadyState:
    """m* in 0..n with the highest steady-state throughput; m* > 0 only if it beats plain decoding
    (m = 0) by min_gain (estimates are noisy; plain decoding is the safe side)."""
    plain = best = steady_state(alpha, 0, cost, batch_size)
    for m in range(1, min(n, len(alpha)) + 1):
        s = steady_state(alpha, m, cost, batch_size)
        if s.throughput > best.throughput:
            best = s
    return best if best.throughput >= plain.throughput * (1 + min_gain) else plain


def probe_interval(extra: int, cost: CostModel, batch_size: int = 1, budget: float = 0.03,
                   batch_tokens: float | None = None, plain: bool = True) -> int:
    """Steps between probes: a probe lengthens a request's tail by `extra` SATs for one step. With
    every request of the batch probing every k steps (the same steps) that costs
    (B extra T'(N) + c) / (k T(N)) of a forward of N tokens (N = B, plain decoding, unless given;
    c only if the step would otherwise be `plain`), at most `budget`."""
    b = max(int(batch_size), 1)
    if extra <= 0:
        return 1
    n_tok = b if batch_tokens is None else batch_tokens
    rel = (b * extra * cost.marginal(n_tok) + (cost.step_overhead if plain else 0.0)) / cost.time(n_tok, not plain)
    if budget <= 0:
        return 1 << 30
    return max(1, min(1 << 30, math.ceil(rel / budget)))


def probe_due(k: int, steps_since_probe: int, probe_clock: int | None = None, period: int | None = None) -> bool:
    """Whether a request probes now, k steps being its probe interval: once k steps have passed since
    its last full tail was read and, with the engine's clock, on the engine's probe steps ((clock + 1)
    divisible by `period`, k unless given: the engine-wide probe back-off makes it a multiple of k).
    Both, not either: a request that starts in back-off pays for its first probe
    with k steps of its own life, like every later one (one that arrives just before an engine probe
    step and ends before it has lived k steps would otherwise pay a whole probe for a plan it never
    uses; at batch 64 on this CPU a probe of every request cost ~9 plain steps, results 14.3)."""
    if steps_since_probe + 1 < k:
        return False
    return probe_clock is None or (probe_clock + 1) % max(int(period or k), 1) == 0


class RecentBatch:
    """The batch size a step's decisions are sized for: the largest of the last `window` steps'.

    Under load a finished request leaves its slot empty for a step or two until the scheduler fills
    it; sized for the dip, a batch of 64 alternated between the rungs 64 and 58 (decision_batch) and
    every request in back-off decided afresh on each change (in vLLM's default engine at batch 64,
    4-5 ms a step, 14 changes in a run of 131 steps; results 22). A batch that really shrinks (a draining one) is
    sized for after `window` steps; until then the error leans to fewer drafts."""

    __slots__ = ("_sizes",)

    def __init__(self, window: int = 8):
        if window < 1:
            raise ValueError(f"RecentBatch needs a window of at least 1 step, got {window}")
        self._sizes: deque[int] = deque(maxlen=window)

    def __call__(self, batch_size: int) -> int:
        """This step's batch size in; the size to decide for out."""
        self._sizes.append(int(batch_size))
        return max(self._sizes)


@dataclass(frozen=True)
class Decision:
    drafts: int        # m: real drafts to send now (a prefix of the ones in hand)
    tail: int          # t: SAT tail after them
    probe: bool = False
    lookup: bool = False  # the drafts are the lookup candidate's, not the SAT argmaxes
    #: the drafts' expected accepted tokens less what they cost, in tokens of the batch (choose_draft_length)
    gain: float = field(default=0.0, compare=False)


def fit_to_room(drafts: int, tail: int, left: int | None) -> tuple[int, int]:
    """(drafts, tail) cut to what a request can still use: `left` tokens it may produce after this
    step (its max_tokens less the tokens it has, or the model's length less its tokens; None:
    unbounded). The next step commits at most drafts + 1 tokens, so more than left - 1 drafts are
    verified for nothing; its tail drafts the step after, which can use at most left - 2 - drafts
    (every draft accepted). vLLM's scheduler caps a step at the model's length only, not at
    max_tokens: the tokens of a request's last steps beyond it are computed and thrown away."""
    if left is None:
        return drafts, tail
    drafts = drafts_that_fit(int(drafts), left)
    return drafts, max(0, min(int(tail), int(left) - 2 - drafts))


def drafts_that_fit(cap: int, left: int | None) -> int:
    """At most `cap` drafts, and no more than can land with `left` tokens to go after this step (the
    next step commits drafts + 1; None: unbounded)."""
    return cap if left is None else max(0, min(cap, int(left) - 1))


@dataclass
class StaleSteps:
    """Engine-wide running figures of the steps a request takes without fresh SAT drafts (after a
    rejection), where the lookup chains it sends instead commit tokens and, when rejected, keep the
    next step stale too: the drafts such a step sends and gets accepted, and the share of them after
    which the next step's drafts are fresh (nothing sent, or everything accepted, with a tail). They
    price what sending a chain puts at risk (choose_draft_length's W). The prior is a SAT-only step."""

    drafts: float = 0.0
    gain: float = 0.0
    to_fresh: float = 1.0
    #: weight of one stale step in the running figures
    STEP = 0.02

    def record(self, drafts: int, accepted: int, fresh_next: bool) -> None:
        self.drafts += self.STEP * (drafts - self.drafts)
        self.gain += self.STEP * (accepted - self.gain)
        self.to_fresh += self.STEP * (float(fresh_next) - self.to_fresh)


def choose_draft_length(
    p: Sequence[float],
    n: int,
    cost: CostModel,
    *,
    alpha: Sequence[float] | None = None,
    batch_size: int = 1,
    cap: int | None = None,
    steps_since_probe: int = 0,
    probe_clock: int | None = None,
    probe_budget: float = 0.03,
    min_gain: float = 0.02,
    probe_backoff: int = 1,
    engine_backoff: int = 1,
    steady: SteadyState | None = None,
    stale: StaleSteps | None = None,
    step_times: Callable[[int], float | None] | None = None,
    drop_tail: bool = True,
) -> Decision:
    """Drafts m (0..min(len(p), n, cap)) and tail t (0..min(n, cap)) for one request this step.

    p: calibrated acceptance estimates of the drafts in hand (p[i]: draft i+1 accepted given the
    ones before were; empty when this step has no fresh drafts). alpha: the request's running
    per-position acceptance (length n; defaults to p padded with its last value, or zeros).
    batch_size: decode requests in the batch. cap: vLLM's per-batch-size speculative-token count
    (dynamic speculative decoding), a cap on both m and t; 0 turns speculation off.
    steps_since_probe: forwards since this request last had a full tail (min(n, cap) SAT rows) read.
    The tail is m* (see the module docstring); every k steps (:func:`probe_interval`) it is the full
    min(n, cap) instead, so that the running acceptance of positions beyond m* stays current (a
    request in back-off, m* = 0, gets its only SAT rows from these probes). probe_clock: the
    engine's step count; when given, the probe falls on the steps where (probe_clock + 1) % k == 0
    instead, the same steps for every request, so that the steps between carry no speculative token
    at all (the patch no_draft_step_plain_sampler then lets vLLM sample them on its plain path,
    which costs less than its rejection sampler, most of all for sampled requests). probe_backoff:
    k is multiplied by it (a power of two keeps the probe steps of requests a subset of each other's).
    engine_backoff: the engine's probe back-off (AdaptiveDrafter.engine_probe_backoff): with the clock,
    the probe steps are those of the interval k * max(probe_backoff, engine_backoff), while the
    request's own life counts in k * probe_backoff.
    steady: best_steady_state(alpha, limit, cost, batch_size, min_gain) when the caller has it already.
    """
    n = max(int(n), 0)
    limit = n if cap is None else max(0, min(n, int(cap)))
    if limit == 0:
        return Decision(0, 0)
    p = [min(max(float(x), 0.0), 1.0) for x in list(p)[:limit]]
    if alpha is None:
        alpha = (p + [p[-1]] * (n - len(p))) if p else [0.0] * n
    alpha = [min(max(float(x), 0.0), 1.0) for x in list(alpha)[:limit]]
    b = max(int(batch_size), 1)

    ss = steady if steady is not None else best_steady_state(alpha, limit, cost, b, min_gain)
    tail = ss.m
    probe = False
    if tail < limit:
        k = probe_interval(limit - tail, cost, b, probe_budget, ss.batch_tokens, plain=tail == 0)
        own = max(int(probe_backoff), 1)
        if probe_due(k * own, steps_since_probe, probe_clock, k * max(own, int(engine_backoff))):
            tail, probe = limit, True

    # kappa: one more token in this forward, in tokens (Dinkelbach: the batch's rate times T'(N));
    # kappa_0: the speculative path, when drafts alone would put this step on it (no tail)
    kappa = ss.throughput * cost.marginal(ss.batch_tokens)
    kappa_0 = ss.throughput * cost.step_overhead if tail == 0 else 0.0
    if ss.m > 0:
        # W = h_D - h_S, the relative values of the two states of steady_state: fresh drafts in hand (D:
        # reward r_D = g_1 + .. + g_m - kappa m, back to D with probability A = g_m) and none (S: reward
        # r_S, to D with probability a_S). Bellman: W = r_D - r_S + (A - a_S) W, so W = (r_D - r_S) /
        # (1 - A + a_S). Without lookups S is a SAT-only step: r_S = 0, a_S = 1, W = r_D / (2 - A).
        g_ss = chain_gains(alpha[: ss.m])
        r_s, a_s = (0.0, 1.0) if stale is None else (stale.gain - kappa * stale.drafts, stale.to_fresh)
        w = max(0.0, (sum(g_ss) - kappa * ss.m - r_s) / (1.0 - g_ss[-1] + a_s))
    else:
        w = 0.0  # back-off (a probe's rows serve the estimates, not the next step's drafts): nothing to lose

    times = step_times if b == 1 else None
    # the rate that turns the measured step times into tokens: this step's steady-state tokens per its time
    t_ss = times(round(ss.tokens_in_forward)) if times is not None and ss.m > 0 else None

    t_tail = times(1 + tail) if t_ss is not None else None

    def extra(m: int, t: int = tail) -> float:  # what m drafts and a tail t cost more than the tail alone, in tokens
        t_m = times(1 + m + t) if t_tail is not None else None
        return ss.tokens_per_step * (t_m - t_tail) / t_ss if t_m is not None else kappa * (m + t - tail)

    # a step that is plain unless drafts are sent (back-off, no probe: a lookup chain) must gain min_gain
    # with them, as drafting must (best_steady_state): b + g_1 + .. + g_m committed in (1 + cost / b) of a
    # plain step's time, cost = kappa m + kappa_0, against (1 + min_gain) b in a plain step's time
    margin = min_gain if ss.m == 0 and tail == 0 else 0.0
    g = chain_gains(p)
    best_m, best_score, best_gain, acc = 0, w, 0.0, 0.0  # m = 0: the tail's rows are fresh for sure
    # The tail drafts the next step only if every draft sent now is accepted (g_m): a chain unlikely to
    # be accepted whole may do better without it (it then ends stale whatever happens; a probe's tail
    # serves the estimates, and a step without drafts keeps its tail, its only way back to fresh rows)
    no_tail = drop_tail and tail > 0 and not probe
    bare = extra(0, 0) if no_tail else 0.0  # a plain step's price against the tail-only one, once a step
    best_t = tail
    for m in range(1, len(g) + 1):
        acc += g[m - 1]
        cost_m = extra(m) + kappa_0
        score = acc - cost_m - margin * (b + cost_m) + g[m - 1] * w
        if score > best_score + 1e-12:
            best_m, best_t, best_score, best_gain = m, tail, score, acc - cost_m
        if no_tail:
            cost_0 = extra(m, 0)  # negative where dropping the tail saves more than the drafts cost
            score = acc - cost_0
            if score > best_score + 1e-12:
                best_m, best_t, best_score, best_gain = m, 0, score, acc - (cost_0 - bare)
    tail = best_t
    if times is not None and (tail or best_m):  # a plain step (nothing sent) stays plain
        base = times(1 + best_m + tail)
        if base is not None:
            tail = max([tail] + [t for t in range(tail + 1, limit + 1)
                                 if (times(1 + best_m + t) or math.inf) <= base * (1 + FREE_TOKENS_SLACK)])
    return Decision(best_m, tail, probe, gain=best_gain)


#: choose_draft_length's tail grows into a step size measured to cost at most this much more
FREE_TOKENS_SLACK = 0.02


def expected_accepted(p: Sequence[float]) -> float:
    """E[accepted drafts] of a chain sent whole: g_1 + ... + g_len."""
    return sum(chain_gains(p))


# --------------------------------------------------------------------------------------------
# per-request state around the policy (what the proposer keeps between steps)


NEVER_PROBED = 1 << 20


def backoff_chain_cost(m: int, batch_size: int, cost: CostModel) -> float:
    """What m drafts sent on a step that is plain otherwise (a request in back-off, no probe) cost, in
    tokens of the batch: kappa m + kappa_0 = B (m T'(B) + c) / T(B), choose_draft_length's terms there."""
    b = max(int(batch_size), 1)
    return b * (max(int(m), 0) * cost.marginal(b) + cost.step_overhead) / cost.time(b)


@dataclass
class RequestState:
    alpha: list[float]                  # running per-position acceptance estimate
    since_probe: int = NEVER_PROBED     # forwards since a full tail was read (a new request probes first,
    #                                     unless the engine-wide acceptance says drafting does not pay)
    sent_q: list[float] = field(default_factory=list)  # SAT max probabilities of the drafts in flight
    sent_lookup: bool = False           # ... which came from the lookup candidate (its own calibration)
    sent_source: str = "text"           # ... found in the request's text or in the datastore (LOOKUP_SOURCES)
    lookup_offered: int = 0             # this request's lookup chains verified so far ...
    lookup_accepted: int = 0            # ... and how many of them had their first token accepted
    steady_m: int = -1                  # m* at the last step (-1: none yet)
    probe_backoff: int = 1              # multiplies the probe interval: doubles after each probe that left
    #                                     m* where it was, back to 1 when m* moves (probe_interval, PROBE_BACKOFF_MAX)
    probe_pending: bool = False         # a probe was sent and its rows not read yet
    # the last best_steady_state and what it was computed from (alpha, limit, batch size, cost model):
    # a request in back-off has no fresh rows, so its alpha stays put and every step would redo it
    steady_memo: tuple | None = None
    # in back-off: the engine step (AdaptiveDrafter.clock) before which no suffix match of this request
    # can be worth sending (lookup_due, note_lookup_miss)
    lookup_after: int = 0
    # the last step had no fresh SAT drafts: (drafts, tail) it sent, for StaleSteps once verified
    stale_sent: tuple[int, int] | None = None


class AdaptiveDrafter:
    """The adaptive policy with its state: calibration, running acceptance per request, cost model.

    Engine-agnostic (the proposer maps vLLM's rows onto it; the tests drive it with made-up
    requests). Per request and step, :meth:`decide` takes what the verify pass said (how many real
    drafts were verified, how many accepted) and the SAT max probabilities of the fresh SAT rows,
    and returns the :class:`Decision` for the next forward.
    """

    ALPHA_STEP = 0.3          # weight of one observation in a request's running acceptance
    ALPHA_STEP_GLOBAL = 0.05  # ... in the engine-wide one new requests start from
    #: at most this factor on a request's probe interval (probe_backoff) and on the engine's
    #: (engine_probe_backoff): a request in back-off whose drafts turn good is noticed within
    #: PROBE_BACKOFF_MAX * k steps of its own life, an engine's within PROBE_BACKOFF_MAX * k engine steps
    PROBE_BACKOFF_MAX = 8
    #: the probe back-off is engine-wide too: a probe that confirms its request's plan doubles the
    #: engine's probe period (once a step), a request's m* moved by its SAT rows puts it back to k; each
    #: new request starts with its own factor at 1 but probes only on the engine's probe steps. Requests
    #: shorter than a few k (at batch 1 on this CPU ~43 steps against k ~ 13) never grew a back-off of
    #: their own and paid the full budget for probes that changed nothing (results 47.5, 48)
    ENGINE_PROBE_BACKOFF = True
    #: a step that sends drafts goes without its tail where their all being accepted does not pay for it
    #: (choose_draft_length's drop_tail; results 39.1: +2-6% replayed with the datastore's chains)
    DROP_TAIL = True
    #: pseudo-observations of the engine-wide estimate in a request's own first-token acceptance of
    #: lookup chains (_lookup_estimates). The lookup calibration is engine-wide and learns from every
    #: request: after greedy code and prose, whose matches are right ~70% of the time, a request
    #: sampled at temperature 1 over random identifiers (1 first token accepted in 117 sent, results
    #: 18) kept being sent chains. With 2, four rejections in a row take a 0.7 estimate to 0.23.
    LOOKUP_REQUEST_WEIGHT = 2.0
    #: steps a request in back-off waits before looking up again when no match length could make a
    #: chain worth sending (note_lookup_miss): the longest prior's match length
    LOOKUP_RECHECK = len(LOOKUP_PRIOR_BY_NGRAM) - 1
    #: weight of one plain step in the running seconds per token of its batch rung (LookupLedger's unit)
    TOKEN_SECONDS_STEP = 0.1
    #: entries _cost_cache holds before it starts afresh (a fixed cost model is never refit)
    COST_CACHE_ENTRIES = 4096

    def __init__(self, n: int, num_sat: int, cost: CostModel, online: bool = True,
                 probe_budget: float = DEFAULT_OPTIONS["probe_budget"], min_gain: float = DEFAULT_OPTIONS["min_gain"]):
        self.n = n
        self.probe_budget = probe_budget
        self.min_gain = min_gain
        self.online = OnlineCost(cost) if online else None
        self.fixed_cost = cost
        self.calibration = AcceptanceCalibration(num_sat)
        # one per lookup source: a datastore match of a given q is right less often than a match in the
        # request's own text (on norepeat at batch 16 one shared calibration sent datastore chains that
        # did not pay, results 24.4)
        self.lookup_calibration = AcceptanceCalibration(num_sat)
        self.datastore_calibration = AcceptanceCalibration(num_sat)
        self.has_datastore = False  # the proposer sets it when it has one (lookup_may_pay)
        self.alpha_global = [0.5] * n
        self.stale = StaleSteps()
        self.step_times = StepTimes() if online else None  # a cost the user fixed is kept as given
        # per batch rung (decision_batch), with the online cost only: the LookupLedger of requests in
        # back-off, and a plain step's seconds per request (a token of the batch, in seconds)
        self.ledgers: dict[int, LookupLedger] | None = {} if online else None
        self.token_seconds: dict[int, float] = {}
        self.states: dict[str, RequestState] = {}
        self.clock = 0  # engine steps (tick): requests past their first probe probe on the same steps
        # multiplies every request's probe period (not its own life's count): ENGINE_PROBE_BACKOFF
        self.engine_probe_backoff = 1
        self._engine_backoff_grown_at = -1  # the clock of its last doubling: once a step, whatever the batch
        self._cached_for: CostModel | None = None  # _cost_cache's figures and the cost model they hold for
        self._cached: dict[tuple, Any] = {}

    def tick(self) -> None:
        """One engine step begins (the proposer calls it once per step, before any decide)."""
        self.clock += 1

    def cost(self) -> CostModel:
        return self.online.model() if self.online is not None else self.fixed_cost

    def observe_step(self, n_tokens: float, seconds: float, speculative: bool = True,
                     sampling: float | None = None, requests: int | None = None) -> None:
        if self.online is not None:
            self.online.add(n_tokens, seconds, speculative, sampling, requests)
            if speculative:
                self.step_times.add(n_tokens, seconds)
            elif requests and seconds > 0 and math.isfinite(seconds):
                rung, per_token = decision_batch(requests), seconds / requests
                old = self.token_seconds.get(rung)
                self.token_seconds[rung] = per_token if old is None else \
                    old + self.TOKEN_SECONDS_STEP * (per_token - old)

    def ledger(self, batch_size: int) -> LookupLedger | None:
        """The LookupLedger of the batch size's rung (None with a cost the user fixed)."""
        if self.ledgers is None:
            return None
        rung = decision_batch(batch_size)
        ledger = self.ledgers.get(rung)
        if ledger is None:  # not setdefault: that would build a ledger on every call (once per miss)
            ledger = self.ledgers[rung] = LookupLedger()
        return ledger

    def note_lookups(self, count: int, seconds: float, worth: float, batch_size: int) -> None:
        """The proposer, once a step: it looked up `count` requests in back-off, in `seconds` (their
        lookups and the decisions on what they found), and sent them chains expected to net `worth`
        tokens (the sum of those decisions' Decision.gain)."""
        ledger = self.ledger(batch_size)
        if ledger is not None and count:
            ledger.add_lookups(count, seconds, worth, self.token_seconds.get(decision_batch(batch_size)))

    def keep_only(self, live: Iterable[str]) -> None:
        live = set(live)
        for gone in [r for r in self.states if r not in live]:
            del self.states[gone]

    def _steady(self, st: RequestState, limit: int, batch_size: int, cost: CostModel) -> SteadyState:
        """best_steady_state for the request, reused while its inputs stay put (RequestState.steady_memo)."""
        key = (tuple(st.alpha), limit, batch_size)
        memo = st.steady_memo
        if memo is None or memo[0] != key or memo[1] is not cost:  # `is`: the memo holds the model alive
            # and shared between requests of the same alpha: those that never read a SAT row keep the
            # engine-wide one they started with, which stands still while nothing is drafted, so a batch in
            # back-off that moves to another rung computes it once
            cache = self._cost_cache(cost)
            steady = cache.get(("steady", key))
            if steady is None:
                steady = cache[("steady", key)] = best_steady_state(st.alpha, limit, cost, batch_size, self.min_gain)
            memo = st.steady_memo = (key, cost, steady)
        return memo[2]

    def _batch_level(self, limit: int, batch_size: int, cost: CostModel) -> tuple[float, int]:
        """(probe budget, probe interval of a request in back-off) at this batch size, cached while the
        limit, batch size and cost model hold. The budget is 0, and the interval endless, where SAT
        drafts could not pay even if every one were accepted (best_steady_state with alpha = 1 is
        plain decoding): a probe only refreshes alpha, and no alpha could change the plan there (on
        this CPU from ~32 requests on, where a step's extra rows cost more than the tokens they add;
        results 22). Lookup chains need no probe. In back-off m* = 0: the steady state is plain
        decoding, the same for every request of the batch."""
        key = (limit, batch_size)
        cache = self._cost_cache(cost)
        level = cache.get(key)
        if level is None:
            can_pay = best_steady_state([1.0] * limit, limit, cost, batch_size, self.min_gain).m > 0
            budget = self.probe_budget if can_pay else 0.0
            level = cache[key] = (budget, probe_interval(limit, cost, batch_size, budget, plain=True))
        return level

    def _cost_cache(self, cost: CostModel) -> dict:
        """Figures that follow from the cost model and the drafter's fixed options (and, where their key
        says so, the calibrations' versions), kept until the model is refit (every few steps online):
        a step of a large batch reads them once per request."""
        if self._cached_for is not cost or len(self._cached) > self.COST_CACHE_ENTRIES:
            self._cached_for, self._cached = cost, {}
        return self._cached

    def _probe_k(self, limit: int, batch_size: int, cost: CostModel) -> int:
        """probe_interval of a request in back-off (:meth:`_batch_level`)."""
        return self._batch_level(limit, batch_size, cost)[1]

    def idle(self, req_id: str, batch_size: int = 1, cap: int | None = None) -> bool:
        """:meth:`decide`'s shortcut for a request with nothing to read or send this step (the caller
        has no lookup candidate worth a decision, :meth:`lookup_worth`, and no fresh SAT row for it):
        True, with its step counted, when it has no drafts in flight, was in back-off at the same
        batch-size rung (:func:`decision_batch`) and cap last step, and is not due a probe now;
        :meth:`decide` would return Decision(0, 0) for it then. One difference, taken knowingly: a
        refit of the online cost model re-evaluates the back-off only at the request's next probe (or
        when the batch moves to another rung), not on the refit's step, which spares every
        request of a batch in back-off a steady-state evaluation per refit. Under load most requests
        are here on most steps: the per-request work of a step then is this check. When the batch moves
        to another rung (or cap), the request's steady state is evaluated there as decide would; if it
        is still plain decoding the shortcut holds (a draining batch of 64 crosses a rung every few
        steps, and every request then went through a lookup and decide: ~10 ms a step, results 42)."""
        if not self.may_idle(req_id):
            return False
        st = self.states[req_id]
        limit = self.n if cap is None else max(0, min(self.n, cap))
        b = decision_batch(batch_size)
        if limit == 0:
            return False
        cost = self.cost()
        if st.steady_memo[0][1:] != (limit, b) and self._steady(st, limit, b, cost).m != 0:
            return False
        # decide would count this step (since_probe + 1) and then ask probe_due
        k, own = self._probe_k(limit, b, cost), max(int(st.probe_backoff), 1)
        if probe_due(k * own, st.since_probe + 1, self.clock, k * max(own, self.engine_probe_backoff)):
            return False
        st.since_probe += 1
        return True

    def may_idle(self, req_id: str) -> bool:
        """Whether :meth:`idle` could say True for the request on some step: it is in back-off, with no
        drafts in flight (a pure read: idle counts the step when it says True)."""
        st = self.states.get(req_id)
        return not (st is None or st.sent_q or st.steady_m != 0 or st.since_probe >= NEVER_PROBED
                    or st.steady_memo is None)

    def lookup_may_pay(self, batch_size: int = 1, cap: int | None = None) -> bool:
        """Whether a lookup chain could be sent to a request in back-off at this batch size, by the
        best acceptance the lookup calibration holds for any q at the first position: in back-off a
        chain pays only if its first token's acceptance clears :meth:`_lookup_bar` (what one more
        token and the speculative path cost, in tokens; every later token is worth less than the
        first). When it cannot, the proposer skips the suffix match for the requests in back-off (the
        match is most of its per-request time)."""
        limit = self.n if cap is None else max(0, min(self.n, cap))
        if limit == 0:
            return False
        b = decision_batch(batch_size)
        key = ("may_pay", b, limit, self.has_datastore, self.lookup_calibration.version,
               self.datastore_calibration.version)
        cache = self._cost_cache(self.cost())
        if key not in cache:
            cache[key] = self._best_backoff_estimate() > self._lookup_bar(b, limit)
        return cache[key]

    def _best_backoff_estimate(self) -> float:
        """lookup_may_pay's best first-token acceptance of a chain in back-off, over every q it can have."""
        # in back-off no SAT row scores a chain: its q is a prior, at most 1 for a text match and
        # max(DATASTORE_PRIOR_BY_NGRAM) for a datastore one (consulted only where there is a datastore)
        sources = [(self.lookup_calibration, 1.0)]
        if self.has_datastore:
            sources.append((self.datastore_calibration, max(DATASTORE_PRIOR_BY_NGRAM)))
        return max(cal.estimate(0, min(top, (i + 1) / cal.buckets - 1e-9))
                   for cal, top in sources for i in range(cal.buckets) if i / cal.buckets <= top)

    def lookup_worth(self, lookup_q: Sequence[float], batch_size: int = 1, cap: int | None = None,
                     req_id: str | None = None, source: str = "text") -> bool:
        """Whether :meth:`decide` could send this lookup chain (its tokens' q) to a request in back-off
        (one :meth:`idle` would let skip): only if its first token's calibrated acceptance clears
        :meth:`_lookup_bar`. When it cannot, decide would return Decision(0, 0): the proposer takes the
        shortcut instead of deciding (under load most requests find a match most steps, too short to
        send). req_id: the request's own record of lookup chains counts too (:meth:`_lookup_estimates`)."""
        limit = self.n if cap is None else max(0, min(self.n, cap))
        if limit == 0 or not lookup_q:
            return False
        return self._lookup_estimates(lookup_q[:1], self.states.get(req_id), source)[0] > self._lookup_bar(batch_size,
                                                                                                          limit)

    def lookup_calibration_of(self, source: str) -> AcceptanceCalibration:
        """The calibration of a lookup source (LOOKUP_SOURCES)."""
        if source not in LOOKUP_SOURCES:
            raise ValueError(f"lookup source must be one of {LOOKUP_SOURCES}, got {source!r}")
        return self.datastore_calibration if source == "datastore" else self.lookup_calibration

    def _lookup_estimates(self, lookup_q: Sequence[float], st: RequestState | None,
                          source: str = "text") -> list[float]:
        """The lookup calibration's acceptance per position, the first one shrunk towards the request's
        own record (LOOKUP_REQUEST_WEIGHT): later positions are conditional on the first accepted,
        which the engine-wide figures describe well enough; whether a request's matches are right at
        all is a property of the request (what it generates, greedy or sampled)."""
        p = self.lookup_calibration_of(source).estimates(lookup_q)
        if p and st is not None and st.lookup_offered:
            w = self.LOOKUP_REQUEST_WEIGHT
            p[0] = (st.lookup_accepted + w * p[0]) / (st.lookup_offered + w)
        return p

    def _lookup_bar(self, batch_size: int, limit: int) -> float:
        """The first-token acceptance a lookup chain needs before :meth:`decide` could send it to a
        request in back-off on a step without a probe. There choose_draft_length scores m drafts
        g_1 + .. + g_m - cost(m) - min_gain (B + cost(m)) against 0: cost(m) = kappa m + kappa_0
        (:func:`backoff_chain_cost`; kappa = B T'(B) / T(B), one more token in a forward of plain decoding,
        in tokens, kappa_0 = B c / T(B), the speculative path), and the step must gain min_gain with the
        chain, as drafting must (best_steady_state). Every g_i is at most p_1, so the score is at most
        m p_1 - (1 + min_gain) cost(m) - min_gain B, positive only if p_1 > ((1 + min_gain) cost(m) +
        min_gain B) / m, least at m = limit: no chain can pay unless p_1 clears that. Without kappa_0 the bar let
        through chains that decide then turned down, every step (at batch 64 on this CPU, a suffix match
        and a decision for most requests of the batch, ~4 ms a step; results 22)."""
        b, limit = decision_batch(batch_size), max(int(limit), 1)
        cost = self.cost()
        cache = self._cost_cache(cost)
        key = ("bar", b, limit)
        if key not in cache:
            cache[key] = ((1 + self.min_gain) * backoff_chain_cost(limit, b, cost) + self.min_gain * b) / limit + 1e-12
        return cache[key]

    def lookup_due(self, req_id: str) -> bool:
        """Whether a request in back-off may find a lookup chain worth sending this step (False: the
        proposer skips its suffix match until :meth:`note_lookup_miss`'s step comes)."""
        st = self.states.get(req_id)
        return st is None or self.clock >= st.lookup_after

    def note_lookup_miss(self, req_id: str, longest_match: int, batch_size: int = 1) -> None:
        """A request in back-off looked up and found no chain worth sending; longest_match: the longest
        suffix of its text matched by any lookup (its own text, the datastore; 0: none). In back-off a
        chain's q is a prior alone (no SAT rows score it): LOOKUP_PRIOR_BY_NGRAM of its match length,
        at most DATASTORE_PRIOR_BY_NGRAM's for a datastore match (each read through its source's
        calibration). The longest suffix that occurs
        earlier in a text, or in a fixed datastore, grows by at most one token per token appended: a
        match of length L now is at most L + j long j steps later. So if the shortest match whose q
        :meth:`lookup_worth` would pass is G long, the matches of the next G - L - 1 steps cannot pass
        and are skipped (:meth:`lookup_due`); with no such G, the request looks again after
        LOOKUP_RECHECK steps. Exact while the lookup calibration, the request's record and kappa stay
        where they are (they move slowly; the same trade as :meth:`idle`'s), and the datastore stays as
        it is (a response datastore that grows can lengthen a match sooner: the skip may then miss a
        chain, never change an output). Under load the suffix
        match was most of the proposer's time for requests in back-off (~20 us each, 1.3 ms a step at
        batch 64 on this CPU, results 20). Where the batch size's LookupLedger finds that lookups do
        not pay for themselves, the skip is LookupLedger.STRIDE_OFF times longer: on purpose, chains
        that would pass are then missed."""
        st = self.states.get(req_id)
        if st is None:
            return
        levels = LOOKUP_PRIOR_BY_NGRAM
        now = max(0, min(int(longest_match), len(levels) - 1))
        limit = self.n  # the proposer's cap only lowers the limit, which raises the bar: the skip stays safe
        b = decision_batch(batch_size)
        # what decides `shortest`: the bar, the calibrations, the request's own record of lookup chains
        key = ("shortest", b, limit, self.has_datastore, self.lookup_calibration.version,
               self.datastore_calibration.version, st.lookup_offered, st.lookup_accepted, self.LOOKUP_REQUEST_WEIGHT)
        cache = self._cost_cache(self.cost())
        if key not in cache:
            bar = self._lookup_bar(b, limit)

            def passes(g: int) -> bool:  # a match g tokens long, in the text or (where there is one) the datastore
                return self._lookup_estimates([levels[g]], st)[0] > bar or (
                    self.has_datastore and self._lookup_estimates([DATASTORE_PRIOR_BY_NGRAM[g]], st, "datastore")[0] > bar)

            cache[key] = next((g for g in range(1, len(levels)) if passes(g)), None)
        shortest = cache[key]
        skip = self.LOOKUP_RECHECK if shortest is None else max(1, shortest - now)
        # where this batch size's lookups have not paid for themselves, fewer of them (LookupLedger)
        ledger = self.ledger(batch_size)
        st.lookup_after = self.clock + skip * (ledger.stride if ledger is not None else 1)

    def pick_lookup(self, candidates: Sequence[Sequence[float]], sources: Sequence[str] | None = None) -> int | None:
        """Of several lookup candidates (each given by its tokens' q, :func:`score_lookup` or
        :func:`score_datastore`, and its source, "text" when not given), the index of the one with
        the largest expected accepted length by its source's calibration; None when there are none."""
        if not candidates:
            return None
        sources = sources or ["text"] * len(candidates)
        values = [expected_accepted(self.lookup_calibration_of(src).estimates(q[: self.n]))
                  for q, src in zip(candidates, sources)]
        return max(range(len(values)), key=values.__getitem__)

    def decide(self, req_id: str, fresh_q: Sequence[float], *, verified_real: int | None = None,
               accepted: int = 0, batch_size: int = 1, cap: int | None = None,
               lookup_q: Sequence[float] | None = None, lookup_source: str = "text",
               room: int | None = None) -> Decision:
        """fresh_q: max probabilities of the request's fresh SAT rows (empty: none). verified_real:
        real drafts verified this step (None: unknown, nothing learned); accepted: how many of them.
        lookup_q: a lookup candidate's scores, one per candidate token (:func:`score_lookup`; the
        proposer's best of several, :meth:`pick_lookup`); None: no candidate. lookup_source: where it
        was found (its calibration). room: the tokens the request may still produce after this step
        (None: unbounded): drafts and tail are cut to what it can use (:func:`fit_to_room`).
        The chain with the larger expected accepted length is drafted from (Decision.lookup)."""
        if room is not None:
            cap = drafts_that_fit(self.n if cap is None else cap, room)
        limit = self.n if cap is None else max(0, min(self.n, cap))
        batch_size = decision_batch(batch_size)
        st = self.states.get(req_id)
        if st is None:
            st = self.states[req_id] = RequestState(alpha=list(self.alpha_global))
            if self.engine_probe_backoff > 1 or self._steady(st, limit, batch_size, self.cost()).m == 0:
                # by the engine-wide acceptance drafting does not pay at this batch size: the request
                # starts in back-off and first probes after k steps of its life, on the engine's probe
                # steps (probe_due), instead of at once (under load every new request's probe would
                # lengthen the forward for nothing). The same where the engine's probes have kept
                # confirming their requests' plans (its back-off has grown): the new request drafts by
                # the engine-wide acceptance and first probes as any request does (at batch 1 on this
                # CPU a first probe per request was half of all probes, session 48)
                st.since_probe = 0
        if st.sent_q and verified_real and verified_real <= len(st.sent_q):
            cal = self.lookup_calibration_of(st.sent_source) if st.sent_lookup else self.calibration
            cal.record_step(st.sent_q[:verified_real], min(max(accepted, 0), verified_real))
            if st.sent_lookup:
                st.lookup_offered += 1
                st.lookup_accepted += int(accepted > 0)
        if st.stale_sent is not None and verified_real is not None:
            sent, tail = st.stale_sent
            got = min(max(accepted, 0), sent)
            self.stale.record(sent, got, tail > 0 and got == sent)
        st.stale_sent = None
        st.sent_q, st.sent_lookup = [], False
        p = self.calibration.estimates(fresh_q)
        for j, pj in enumerate(p[: self.n]):
            st.alpha[j] += self.ALPHA_STEP * (pj - st.alpha[j])
            self.alpha_global[j] += self.ALPHA_STEP_GLOBAL * (pj - self.alpha_global[j])
        probe_read = bool(fresh_q) and len(fresh_q) >= limit
        st.since_probe = 0 if probe_read else st.since_probe + 1
        cost = self.cost()
        last_memo = st.steady_memo  # what its last plan was computed for ((alpha, limit, batch), ...)
        steady = self._steady(st, limit, batch_size, cost)
        steady_m = steady.m
        if steady_m != st.steady_m:
            st.probe_backoff = 1
            # the engine's back-off starts afresh only where SAT rows moved a plan: not for a new request's
            # first one, nor on a step without rows (a refit moved it) or where the request's room or batch
            # rung changed the limit (near its end room shrinks the limit and m* with it: every request of
            # a run at batch 1 did that, session 48)
            if fresh_q and st.steady_m >= 0 and last_memo is not None and \
                    last_memo[0][1:] == (limit, batch_size):
                self.engine_probe_backoff = 1
        elif probe_read and st.probe_pending:
            # the probe told nothing that changes the plan: probe half as often (up to PROBE_BACKOFF_MAX * k)
            st.probe_backoff = min(2 * st.probe_backoff, self.PROBE_BACKOFF_MAX)
            if self.ENGINE_PROBE_BACKOFF and self._engine_backoff_grown_at != self.clock:
                self.engine_probe_backoff = min(2 * self.engine_probe_backoff, self.PROBE_BACKOFF_MAX)
                self._engine_backoff_grown_at = self.clock
        st.steady_m = steady_m
        if probe_read:
            st.probe_pending = False
        qs, use_lookup = fresh_q, False
        if lookup_q:
            p_lookup = self._lookup_estimates(lookup_q, st, lookup_source)
            if expected_accepted(p_lookup[:limit]) > expected_accepted(p[:limit]):
                qs, p, use_lookup = lookup_q, p_lookup, True
        d = choose_draft_length(p, self.n, cost, alpha=st.alpha, batch_size=batch_size, cap=cap,
                                steps_since_probe=st.since_probe,
                                probe_budget=self._batch_level(limit, batch_size, cost)[0] if limit else 0.0,
                                probe_clock=self.clock if st.since_probe < NEVER_PROBED else None,
                                min_gain=self.min_gain, probe_backoff=st.probe_backoff,
                                engine_backoff=self.engine_probe_backoff, steady=steady,
                                stale=self.stale, step_times=self.step_times.time if self.step_times else None,
                                drop_tail=self.DROP_TAIL)
        if room is not None:  # the tail the request has no room left to use (its drafts are within cap)
            d = replace(d, tail=fit_to_room(d.drafts, d.tail, room)[1])
        st.probe_pending = st.probe_pending or d.probe
        st.sent_q = [float(x) for x in qs[: d.drafts]]
        st.sent_lookup = use_lookup and d.drafts > 0
        st.sent_source = lookup_source if st.sent_lookup else "text"
        if not fresh_q and (d.drafts or d.tail):  # a plain step (back-off) is not one of the D/S chain's
            st.stale_sent = (d.drafts, d.tail)
        return Decision(d.drafts, d.tail, d.probe, st.sent_lookup, gain=d.gain)


__all__ = ["AcceptanceCalibration", "chain_gains", "SteadyState", "steady_state", "best_steady_state", "probe_interval",
           "probe_due", "RecentBatch", "Decision", "fit_to_room", "drafts_that_fit", "StaleSteps", "choose_draft_length",
           "expected_accepted", "backoff_chain_cost", "RequestState", "AdaptiveDrafter"]
