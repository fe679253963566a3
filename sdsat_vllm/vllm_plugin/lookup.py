"""Lookup-backed drafts: continuations of a request's own text (prompt lookup) and of the model's text in a
datastore, scored for the drafting policy (policy.py), and whether looking them up pays.

Pure Python (numpy for the match). :func:`suffix_match` finds the tokens that followed the latest earlier
occurrence of the text's longest suffix; :func:`score_lookup` and :func:`score_datastore` give each token
of a candidate its q (the fresh SAT row's probability of it combined with a prior by the match's length,
and for the datastore the share of the match's occurrences that continue with it), which the policy
calibrates per source and weighs against the SAT drafts by their expected accepted length.
:class:`LookupLedger` keeps, per batch rung, what the lookups of requests in back-off cost against what
their chains are expected to net. docs/design.md, section 4.5 ("Lookup-backed drafts", "Lookups must
pay for themselves too"); the datastore itself is sdsat_vllm/datastore.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


#: Prior chance that a lookup token is right, by the length of the matched suffix (index: ngram
#: tokens, the last entry for longer ones), before any SAT row scores it. Measured on SmolLM2-135M's
#: greedy completions of 32 HumanEval and 16 norepeat prompts that the benchmarks do not use
#: (results 10.2): a 1-token match is right 1 time in 5, a 2-token one 1 in 2, 3 tokens 2 in 3, 4-5
#: tokens 4 in 5, longer ones 9 in 10. Only the ordering matters much: the lookup calibration maps
#: each q bucket to the acceptance it sees.
LOOKUP_PRIOR_BY_NGRAM = (0.0, 0.2, 0.5, 0.65, 0.75, 0.8, 0.9)


def lookup_prior_q(ngram: int) -> float:
    """The prior of a lookup token continuing a matched suffix of `ngram` tokens (0 for none)."""
    return LOOKUP_PRIOR_BY_NGRAM[max(0, min(int(ngram), len(LOOKUP_PRIOR_BY_NGRAM) - 1))]


@dataclass(frozen=True, slots=True)
class LookupMatch:
    """A continuation found by prompt lookup: the tokens that followed an earlier occurrence of the
    text's last `ngram` tokens."""

    tokens: list[int]
    ngram: int


def suffix_match(tokens, max_len: int, min_ngram: int = 1, max_ngram: int = 8, window: int = 4096,
                 stop: frozenset[int] | set[int] = frozenset()) -> LookupMatch | None:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the longest suffix
    (min_ngram..max_ngram tokens) of `tokens` (the request's committed text, prompt included; the
    last `window` tokens searched), at most max_len of them, cut before the first id in `stop` (SAT
    ids: a draft must never be one). None when nothing matches or nothing is left after the cut."""
    import numpy as np

    if max_len <= 0:
        return None
    arr = np.asarray(tokens)[-window:]  # the window first: a long text is not copied whole
    if arr.dtype.kind not in "iu":
        arr = arr.astype(np.int64)
    n_tok = len(arr)
    if n_tok < max(min_ngram, 1) + 1:
        return None
    # Why bytes: a proposer looks up most requests of a batch every step or two (AdaptiveDrafter's
    # lookup_due), and bytes.rfind scans in C where a numpy search pays ~1 us a call for each of ~10
    # calls (30 us a lookup against ~8 here; results 41). An earlier occurrence of the last k tokens
    # ends at i <= n_tok - 2, i.e. lies in the first n_tok - 1 tokens' bytes; rfind finds the latest,
    # and an offset that is not a multiple of the item size straddles two tokens: search again before it.
    buf, w = arr.tobytes(), arr.itemsize
    region = (n_tok - 1) * w

    def latest_end(k: int) -> int | None:
        """The latest i <= n_tok - 2 where the text's last k tokens end earlier (None: nowhere)."""
        pattern, end = buf[(n_tok - k) * w:], region
        while True:
            at = buf.rfind(pattern, 0, end)
            if at < 0:
                return None
            if at % w == 0:
                return at // w + k - 1
            end = at + len(pattern) - 1  # the next try starts before `at`

    # the last k tokens occur earlier only if the last k - 1 do (within that occurrence): the longest
    # match is the k before the first that fails, and its latest occurrence the last one found
    best, end_at = 0, None
    for k in range(1, min(max_ngram, n_tok - 1) + 1):
        i = latest_end(k)
        if i is None:
            break
        best, end_at = k, i
    if end_at is None or best < min_ngram:
        return None
    out = []
    for t in arr[end_at + 1: end_at + 1 + max_len].tolist():  # Python ints
        if t in stop:
            break
        out.append(t)
    return LookupMatch(out, best) if out else None


def suffix_candidate(tokens, max_len: int, min_ngram: int = 2, **kwargs) -> list[int]:
    """The tokens of :func:`suffix_match` ([] when there is none)."""
    match = suffix_match(tokens, max_len, min_ngram, **kwargs)
    return match.tokens if match is not None else []


def score_lookup(ngram: int, sat_probs: Sequence[float], length: int) -> list[float]:
    """The q of each of a lookup candidate's `length` tokens: where the fresh SAT row j gives token j
    probability s_j, the two pieces of evidence combined as 1 - (1 - s_j)(1 - prior) (either one
    alone can make a token likely); beyond the fresh rows, the prior of its match length."""
    prior = lookup_prior_q(ngram)
    return [1.0 - (1.0 - min(max(float(sat_probs[j]), 0.0), 1.0)) * (1.0 - prior) if j < len(sat_probs) else prior
            for j in range(length)]


#: Prior chance that a datastore token is right (sdsat_vllm.datastore), by the matched suffix's length,
#: before its share (the fraction of the match's occurrences that continue with it) scales it. On
#: SmolLM2-135M's greedy answers to the 64 norepeat questions against a datastore of its answers to
#: other questions (results 24.1), a first token is right ~.26 of the time after a 2-token match, ~.4
#: after 6 or more, and ~.04 where under a tenth of the occurrences agree, ~.4 where nine tenths do;
#: a 1-token match, where nothing longer matched, ~.27 (results 25.1). Each entry is at most
#: LOOKUP_PRIOR_BY_NGRAM's at the same length: a match in the request's own text is the stronger
#: evidence, and AdaptiveDrafter.note_lookup_miss's skip relies on that order.
DATASTORE_PRIOR_BY_NGRAM = (0.0, 0.2, 0.35, 0.4, 0.45, 0.5, 0.55)
#: where a lookup candidate was found: the request's own text, or the datastore (each its calibration)
LOOKUP_SOURCES = ("text", "datastore")


def score_datastore(ngram: int, share: Sequence[float], sat_probs: Sequence[float]) -> list[float]:
    """The q of each token of a datastore candidate (one per `share`): its prior, the length's prior
    times its share, combined with the fresh SAT row's probability of it as in :func:`score_lookup`."""
    prior = DATASTORE_PRIOR_BY_NGRAM[max(0, min(int(ngram), len(DATASTORE_PRIOR_BY_NGRAM) - 1))]
    out = []
    for j, sh in enumerate(share):
        pj = prior * min(max(float(sh), 0.0), 1.0)
        out.append(1.0 - (1.0 - min(max(float(sat_probs[j]), 0.0), 1.0)) * (1.0 - pj) if j < len(sat_probs) else pj)
    return out


class LookupLedger:
    """Whether looking up the requests in back-off pays for itself at one batch size (a rung of
    decision_batch): the seconds the proposer spends on their lookups against what the chains those
    lookups find are expected to net (their accepted tokens less their price, Decision.gain), both in
    tokens of the batch. Every WINDOW lookups a verdict (the first after FIRST_WINDOW): lookups that
    netted less than they cost become STRIDE_OFF times rarer (a request that found nothing to send waits
    that many times longer, AdaptiveDrafter.note_lookup_miss); lookups that netted more, back to every
    step a chain could pay on. The rarer lookups keep measuring the ratio, and find it better: only a
    request whose lookup found nothing waits longer, and misses come in runs (at batch 16 in a fresh
    engine, windows of 128 lookups at stride 1 were worth under a third of their cost, the next 128 at
    stride 8 1.0-2.2x, results 43), so a verdict taken at STRIDE_OFF leans to turning lookups back on.
    Near break-even the verdict holds where it is (lookups become rarer only where their chains were
    worth less than OFF_BELOW of their cost, and common again where worth more than it): either choice
    costs little there, and a window's worth is itself an estimate (a few chains, a calibration still
    learning) that an engine's threads timing the lookups can tip either way.

    Why: under load most requests are in back-off and each is looked up every step or two for a chain
    that might lift the step by min_gain. At batch 16 on this CPU ~14 lookups a step found a chain
    on about one step in ten (results 28, 29): the lookups cost ~2% of a step, the chains won a
    fraction of that. Where chains pay (text that repeats itself, a GPU where a token is nearly free)
    the verdict keeps every lookup. Expected figures, not realized ones: a window holds a handful of
    chains, and whether each was accepted would make the verdict a coin toss (session 28's windows of
    realized worth: -45 to +168 ms per 64 steps against ~50 ms spent; results 29).

    The first verdict comes after FIRST_WINDOW lookups: a fresh engine looks up every request in
    back-off every step or two until then, and at batch 16 the first 512 lookups took ~45 of a 256-step
    run's steps at ~1 ms a step (norepeat; 36 on HumanEval) and were worth 0.52-0.56 of their cost on
    norepeat (just enough to keep them every step) and 0.08 on HumanEval; the first 128, 0.29 and 0.0
    (results 43)."""

    WINDOW = 512
    FIRST_WINDOW = 128
    STRIDE_OFF = 8
    OFF_BELOW = 0.5
    __slots__ = ("lookups", "seconds", "worth", "stride", "window")

    def __init__(self):
        self.lookups = 0     # lookups of requests in back-off, this window ...
        self.seconds = 0.0   # ... the proposer's time on them
        self.worth = 0.0     # ... and what the chains they found are expected to net, in tokens
        self.stride = 1
        self.window = self.FIRST_WINDOW  # lookups before the next verdict

    def add_lookups(self, count: int, seconds: float, worth: float, token_seconds: float | None) -> None:
        """A step's lookups of requests in back-off: how many, their seconds, what the chains they found
        and sent are expected to net (the sum of their Decision.gain, in tokens), and what a token of
        the batch takes (a plain step's seconds per request; None: not measured yet, no verdict)."""
        self.lookups += max(int(count), 0)
        self.seconds += max(float(seconds), 0.0)
        self.worth += float(worth)
        if self.lookups >= self.window and token_seconds:
            spent = self.seconds / token_seconds
            if self.worth > spent:
                self.stride = 1
            elif self.worth < self.OFF_BELOW * spent:
                self.stride = self.STRIDE_OFF
            self.lookups, self.seconds, self.worth, self.window = 0, 0.0, 0.0, self.WINDOW


__all__ = ["LOOKUP_PRIOR_BY_NGRAM", "lookup_prior_q", "LookupMatch", "suffix_match", "suffix_candidate", "score_lookup",
           "DATASTORE_PRIOR_BY_NGRAM", "LOOKUP_SOURCES", "score_datastore", "LookupLedger"]
