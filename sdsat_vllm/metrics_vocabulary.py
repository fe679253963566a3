"""The one vocabulary of speculative-decoding metrics, defined once, used by the engine's
`DecodeMetrics` (sdsat_vllm/decoding/metrics.py), the plugin's `SpecDecodeSummary` (from vLLM's
counters, sdsat_vllm/vllm_plugin/metrics.py), `sdsat demo` and the benchmarks (docs/design.md,
section 7).

Words are vLLM's where vLLM has one (its SpecDecodingStats and its "Mean acceptance length" /
"Per-position acceptance rate" / "Draft acceptance rate" log line), SDSAT's otherwise. One name,
one meaning, in every class and every table. A *step* is one verify forward of one request.

Counters
    num_drafts                   (vLLM) steps that carried speculative tokens. The SAT tail counts
                                 as speculative tokens, so under SDSAT's fixed policy every decode
                                 step counts, the SAT-only ones (no real draft) included, but a
                                 request's last one or two before its max_tokens, which carry
                                 nothing (nothing sent there could land). For ngram: steps that
                                 found a match. Engine: decode forwards of a speculative mode (each
                                 carries drafts or SATs); 0 for `ar`; the prefill forward never.
    num_draft_tokens             (vLLM) real draft tokens offered to verification; the SAT tail is
                                 never counted (plugin patch `spec_stats_exclude_sat`). Tree: nodes.
    num_accepted_tokens          (vLLM) real drafts accepted. vLLM counts them before its stop
                                 check: drafts accepted past a request's max_tokens, EOS or stop
                                 string count, though the scheduler drops them. SDSAT sends none
                                 past max_tokens (policy.fit_to_room); ngram and suffix decoding do.
    num_accepted_tokens_per_pos  (vLLM) [i]: steps in which the draft at position i (0-based) was
                                 accepted (accepted drafts are a prefix, so positions 0..i all were).
    num_draft_steps              (SDSAT) steps that offered at least one real draft. The engine
                                 counts them; from vLLM's counters it is num_draft_tokens / n when
                                 every real draft is n long (the fixed policy's are, but for a
                                 request's last steps before max_tokens, cut to what can land: a
                                 request of S such steps reads up to 1/S off), else unknown.
    num_draft_steps_per_pos      (SDSAT) [i]: steps that offered a real draft at position i (a
                                 top-k tree offers a depth only where its shape reaches it).
    num_decoded_tokens           tokens committed by decode steps: the output minus the one token
                                 each request's prefill samples.
    num_decode_forwards          decode steps. Engine: counted. vLLM: num_decoded_tokens -
                                 num_accepted_tokens, since every decode step commits 1 + accepted;
                                 short by the accepted drafts the stop check dropped (see
                                 num_accepted_tokens), so a method that drafts past max_tokens
                                 shows a few more tokens per decode forward than it committed.

Figures (the functions below; the classes expose each as a property of the same name)
    acceptance_rate              num_accepted_tokens / num_draft_tokens. vLLM's "draft acceptance
                                 rate": of the real drafts offered, the share accepted.
    mean_acceptance_length       1 + num_accepted_tokens / num_drafts. vLLM's. Under SDSAT nearly
                                 every decode step is a draft (num_drafts), so it is about the
                                 tokens per decode forward.
    acceptance_rate_per_pos      [i] num_accepted_tokens_per_pos[i] / num_drafts. vLLM's
                                 "per-position acceptance rate". Under SDSAT its denominator counts
                                 the SAT-only steps, so it understates how often a real draft is right.
    real_draft_mean_acceptance_length
                                 1 + num_accepted_tokens / num_draft_steps: what a step that offered
                                 real drafts commits on average (SAT-only steps left out).
    real_draft_acceptance_rate_per_pos
                                 [i] num_accepted_tokens_per_pos[i] / num_draft_steps_per_pos[i]:
                                 how often a real draft at position i is accepted, given it was offered.
                                 Equal to acceptance_rate_per_pos for methods that draft at every step.
    tokens_per_forward           (τ) committed tokens / target forwards, the prefill forward and its
                                 token included (`ar`: 1.0). Engine only: vLLM's counters do not see
                                 prefill forwards.
    tokens_per_decode_forward    num_decoded_tokens / num_decode_forwards: τ without the prefill.
                                 vLLM: needs the output lengths beside the counters (the benchmark
                                 runner has them); for SDSAT it equals mean_acceptance_length up to
                                 tokens cut by a stop string.
    SAT tokens                   (engine: num_sat_tokens) SAT positions computed. They are the
                                 drafting itself, not rejected drafts, so no figure above counts them.

A figure with a zero denominator is 0.0, except the mean acceptance lengths (1.0: a step commits
at least its one token); a figure whose counter the source cannot know is None.

This module is the bottom layer: no torch, no vLLM, nothing of sdsat_vllm.
"""

from __future__ import annotations

from typing import Sequence

__all__ = [
    "FIGURES",
    "SpecDecodeFigures",
    "acceptance_rate",
    "acceptance_rate_per_pos",
    "mean_acceptance_length",
    "real_draft_acceptance_rate_per_pos",
    "real_draft_mean_acceptance_length",
    "tokens_per_decode_forward",
    "tokens_per_forward",
]


def _ratio(num: float, den: float | None) -> float:
    return num / den if den else 0.0


def acceptance_rate(num_accepted_tokens: int, num_draft_tokens: int) -> float:
    """vLLM's draft acceptance rate: accepted real drafts / real drafts offered."""
    return _ratio(num_accepted_tokens, num_draft_tokens)


def mean_acceptance_length(num_accepted_tokens: int, num_drafts: int) -> float:
    """vLLM's mean acceptance length: 1 + accepted / drafts (1.0 when nothing was drafted)."""
    return 1.0 + num_accepted_tokens / num_drafts if num_drafts else 1.0


def acceptance_rate_per_pos(num_accepted_tokens_per_pos: Sequence[int], num_drafts: int) -> list[float]:
    """vLLM's per-position acceptance rate: [i] accepted at position i / drafts."""
    return [_ratio(a, num_drafts) for a in num_accepted_tokens_per_pos]


def real_draft_mean_acceptance_length(num_accepted_tokens: int, num_draft_steps: float | None) -> float | None:
    """1 + accepted / steps that offered a real draft (None when those steps are unknown)."""
    if num_draft_steps is None:
        return None
    return 1.0 + num_accepted_tokens / num_draft_steps if num_draft_steps else 1.0


def real_draft_acceptance_rate_per_pos(num_accepted_tokens_per_pos: Sequence[int],
                                       num_draft_steps_per_pos: Sequence[float] | None) -> list[float] | None:
    """[i] accepted at position i / steps that offered a real draft at position i (None when unknown)."""
    if num_draft_steps_per_pos is None:
        return None
    acc, steps = list(num_accepted_tokens_per_pos), list(num_draft_steps_per_pos)
    n = max(len(acc), len(steps))
    return [_ratio(acc[i] if i < len(acc) else 0, steps[i] if i < len(steps) else 0) for i in range(n)]


def tokens_per_forward(num_tokens: int, num_forwards: int) -> float:
    """τ: committed tokens / target forwards, prefill included (0.0 before any forward)."""
    return _ratio(num_tokens, num_forwards)


def tokens_per_decode_forward(num_decoded_tokens: int | None, num_decode_forwards: int | None) -> float | None:
    """Tokens committed per decode forward, the prefill left out (None when unknown)."""
    if num_decoded_tokens is None or num_decode_forwards is None:
        return None
    return _ratio(num_decoded_tokens, num_decode_forwards)


#: The figures every metrics class exposes under these names (`SpecDecodeFigures.figures()`).
FIGURES = ("acceptance_rate", "mean_acceptance_length", "acceptance_rate_per_pos",
           "real_draft_mean_acceptance_length", "real_draft_acceptance_rate_per_pos", "tokens_per_decode_forward")


class SpecDecodeFigures:
    """The figures of the glossary as properties, for a class that holds the counters.

    A subclass provides num_drafts, num_draft_tokens, num_accepted_tokens,
    num_accepted_tokens_per_pos, num_draft_steps, num_draft_steps_per_pos, num_decoded_tokens and
    num_decode_forwards (as fields or properties; None where its source cannot know one).
    """

    __slots__ = ()

    @property
    def acceptance_rate(self) -> float:
        return acceptance_rate(self.num_accepted_tokens, self.num_draft_tokens)

    @property
    def mean_acceptance_length(self) -> float:
        return mean_acceptance_length(self.num_accepted_tokens, self.num_drafts)

    @property
    def acceptance_rate_per_pos(self) -> list[float]:
        return acceptance_rate_per_pos(self.num_accepted_tokens_per_pos, self.num_drafts)

    @property
    def real_draft_mean_acceptance_length(self) -> float | None:
        return real_draft_mean_acceptance_length(self.num_accepted_tokens, self.num_draft_steps)

    @property
    def real_draft_acceptance_rate_per_pos(self) -> list[float] | None:
        return real_draft_acceptance_rate_per_pos(self.num_accepted_tokens_per_pos, self.num_draft_steps_per_pos)

    @property
    def tokens_per_decode_forward(self) -> float | None:
        return tokens_per_decode_forward(self.num_decoded_tokens, self.num_decode_forwards)

    def figures(self) -> dict:
        """Every figure of FIGURES by name (None where the source cannot compute it)."""
        return {name: getattr(self, name) for name in FIGURES}
