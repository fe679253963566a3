"""The vocabulary's figures from vLLM's own spec-decode counters (no torch, no vLLM import needed).

The names and their definitions are in sdsat_vllm/metrics_vocabulary.py (docs/design.md,
section 7); the engine's `DecodeMetrics` uses the same ones. What vLLM's counters count under the
SDSAT plugin (patch `spec_stats_exclude_sat` keeps the SAT tail out of the draft counts):

* ``num_drafts``: decode forwards that carried speculative tokens. Every decode forward of an
  SDSAT request carries a SAT tail, so this counts all of them, SAT-only forwards included. For
  ngram it counts forwards that found a match.
* ``num_draft_tokens``: real drafts offered; ``num_accepted_tokens``: real drafts accepted.
* ``num_accepted_tokens_per_pos[i]``: forwards in which draft position i was accepted.

Hence, for SDSAT, ``mean_acceptance_length`` (1 + accepted / num_drafts) is the tokens per decode
forward, and ``acceptance_rate_per_pos`` (accepted at i / num_drafts) counts SAT-only forwards in
its denominator. The real-draft figures need ``num_draft_steps``, which vLLM does not count: with
``draft_len`` (n, the real drafts per drafting step) it is num_draft_tokens / n, exact for SDSAT,
which always drafts exactly n = num_speculative_tokens (an approximation if vLLM's scheduler
trims drafts near max_model_len). Methods with drafts of variable length (ngram) leave draft_len
None and get None for those figures. ``tokens_per_decode_forward`` needs ``num_decoded_tokens``
(from the outputs, not the counters; `sdsat_vllm.bench.run_vllm` sets it).

Prometheus exposes the same counters as ``vllm:spec_decode_num_drafts_total`` etc.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..metrics_vocabulary import SpecDecodeFigures


@dataclass
class SpecDecodeSummary(SpecDecodeFigures):
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    draft_len: int | None = None  # real drafts per drafting step (n); None when drafts vary in length
    # output tokens minus one per request (the token its prefill samples); None: not known here
    num_decoded_tokens: int | None = None

    @property
    def num_draft_steps(self) -> float | None:
        """Forwards that offered a real draft (exact when no draft was trimmed); None without draft_len."""
        return self.num_draft_tokens / self.draft_len if self.draft_len else None

    @property
    def num_draft_steps_per_pos(self) -> list[float] | None:
        """Every drafting step offers positions 0..draft_len-1; None without draft_len."""
        steps = self.num_draft_steps
        return None if steps is None else [steps] * self.draft_len

    @property
    def num_decode_forwards(self) -> int | None:
        """Each decode forward commits 1 + its accepted drafts (at least 1 when decoded tokens are known)."""
        if self.num_decoded_tokens is None:
            return None
        return max(self.num_decoded_tokens - self.num_accepted_tokens, 1)

    def __sub__(self, other: "SpecDecodeSummary") -> "SpecDecodeSummary":
        if None not in (self.draft_len, other.draft_len) and self.draft_len != other.draft_len:
            raise ValueError(f"draft_len differs: {self.draft_len} vs {other.draft_len}")
        mine, theirs = self.num_accepted_tokens_per_pos, other.num_accepted_tokens_per_pos
        n = max(len(mine), len(theirs))
        a = mine + [0] * (n - len(mine))
        b = theirs + [0] * (n - len(theirs))
        decoded = (None if None in (self.num_decoded_tokens, other.num_decoded_tokens)
                   else self.num_decoded_tokens - other.num_decoded_tokens)
        return SpecDecodeSummary(
            num_drafts=self.num_drafts - other.num_drafts,
            num_draft_tokens=self.num_draft_tokens - other.num_draft_tokens,
            num_accepted_tokens=self.num_accepted_tokens - other.num_accepted_tokens,
            num_accepted_tokens_per_pos=[x - y for x, y in zip(a, b)],
            draft_len=self.draft_len if self.draft_len is not None else other.draft_len,
            num_decoded_tokens=decoded,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(num_draft_steps=self.num_draft_steps, num_draft_steps_per_pos=self.num_draft_steps_per_pos,
                 num_decode_forwards=self.num_decode_forwards, **self.figures())
        return d

    def describe(self) -> str:
        def fmt(rates: list[float] | None) -> str:
            return "-" if rates is None else "[" + ", ".join(f"{r:.2f}" for r in rates) + "]"

        return (f"mean acceptance length {self.mean_acceptance_length:.2f}, acceptance {self.acceptance_rate:.1%} "
                f"({self.num_accepted_tokens}/{self.num_draft_tokens} draft tokens over {self.num_drafts} drafts), "
                f"acceptance rate per position: real drafts {fmt(self.real_draft_acceptance_rate_per_pos)}, "
                f"per draft (vLLM) {fmt(self.acceptance_rate_per_pos)}")


def summary_from_steps(steps: Iterable[tuple[int, int]], draft_len: int | None = None) -> SpecDecodeSummary:
    """Fold (real drafts offered, accepted) per verify forward into vLLM's counters.

    What vLLM's SpecDecodingStats.observe_draft does once per forward with speculative tokens,
    with the SAT tail excluded: a SAT-only forward is (0, 0) and still counts in num_drafts.
    """
    steps = list(steps)
    s = SpecDecodeSummary(num_accepted_tokens_per_pos=[0] * max([draft_len or 0] + [o for o, _ in steps]),
                          draft_len=draft_len)
    for offered, accepted in steps:
        if not 0 <= accepted <= offered:
            raise ValueError(f"accepted {accepted} of {offered} offered")
        s.num_drafts += 1
        s.num_draft_tokens += offered
        s.num_accepted_tokens += accepted
        for i in range(accepted):  # accepted drafts are a prefix: positions 0..accepted-1
            s.num_accepted_tokens_per_pos[i] += 1
    return s


def from_llm_metrics(metrics: Iterable[Any], draft_len: int | None = None) -> SpecDecodeSummary:
    """From `LLM.get_metrics()` (vllm.v1.metrics.reader Counter/Vector objects)."""
    s = SpecDecodeSummary(draft_len=draft_len)
    for m in metrics:
        name = getattr(m, "name", "")
        if name == "vllm:spec_decode_num_drafts":
            s.num_drafts = int(m.value)
        elif name == "vllm:spec_decode_num_draft_tokens":
            s.num_draft_tokens = int(m.value)
        elif name == "vllm:spec_decode_num_accepted_tokens":
            s.num_accepted_tokens = int(m.value)
        elif name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            s.num_accepted_tokens_per_pos = [int(v) for v in m.values]
    return s


_LINE = re.compile(r'^(vllm:spec_decode_[a-z_]+?)(?:_total)?(\{[^}]*\})?\s+([0-9.eE+-]+)$')


def from_prometheus(text: str, draft_len: int | None = None) -> SpecDecodeSummary:
    """From the text of a `vllm serve` /metrics page (sums over engines/models)."""
    s = SpecDecodeSummary(draft_len=draft_len)
    per: dict[int, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", int(float(m.group(3)))
        if name == "vllm:spec_decode_num_drafts":
            s.num_drafts += value
        elif name == "vllm:spec_decode_num_draft_tokens":
            s.num_draft_tokens += value
        elif name == "vllm:spec_decode_num_accepted_tokens":
            s.num_accepted_tokens += value
        elif name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            pos = re.search(r'position="(\d+)"', labels)
            if pos:
                per[int(pos.group(1))] = per.get(int(pos.group(1)), 0) + value
    if per:
        s.num_accepted_tokens_per_pos = [per.get(i, 0) for i in range(max(per) + 1)]
    return s
