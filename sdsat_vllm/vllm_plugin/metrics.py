"""τ and acceptance from vLLM's own spec-decode metrics (no torch, no vLLM import needed).

Glossary, in vLLM's vocabulary, with what each counter means under the SDSAT plugin (patch
`spec_stats_exclude_sat`):

* ``num_drafts``: verify forwards that carried speculative tokens. Every decode forward of an
  SDSAT request carries a SAT tail, so this counts all of them, SAT-only forwards included
  (a SAT-only forward proposes no real draft). For ngram it counts forwards that found a match.
* ``num_draft_tokens`` (draft tokens): real drafts offered to verification; the SAT tail is not
  counted.
* ``num_accepted_tokens`` (accepted tokens): real drafts accepted.
* ``num_accepted_tokens_per_pos[i]`` (``accepted_per_pos``): forwards in which draft position i
  was accepted (hence positions 0..i all were).

One decode forward commits ``1 + accepted`` tokens, so

    mean acceptance length = τ = 1 + num_accepted_tokens / num_drafts   (tokens per decode forward)
    acceptance rate            = num_accepted_tokens / num_draft_tokens (of real drafts)

vLLM's "mean acceptance length" is, for SDSAT, exactly tokens per target forward (prefill
forwards excluded). Acceptance per position comes in two figures:

* ``acceptance_per_pos`` = accepted_per_pos[i] / num_drafts: vLLM's per-forward figure. In SDSAT's
  fused mode the denominator includes SAT-only forwards, so it understates how often a real draft
  is right; for methods whose every counted forward drafts at position i it is the real figure.
* ``real_draft_acceptance_per_pos`` = accepted_per_pos[i] / num_real_draft_steps: how often a real
  draft at position i is accepted, given it was offered. It needs ``draft_len`` (n, the real drafts
  per drafting step): SDSAT always drafts exactly n = num_speculative_tokens, so the steps with a
  real draft at each position i < n number num_draft_tokens / n. (vLLM's scheduler may trim drafts
  near max_model_len; then this is an approximation.) Methods with drafts of variable length
  (ngram) leave draft_len None: vLLM does not count drafts per position, so only the per-forward
  figure exists.

Prometheus exposes the same counters as ``vllm:spec_decode_num_drafts_total`` etc.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable


@dataclass
class SpecDecodeSummary:
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    draft_len: int | None = None  # real drafts per drafting step (n); None when drafts vary in length

    @property
    def tau(self) -> float:
        """vLLM's mean acceptance length: tokens committed per decode forward (1.0 when nothing was drafted)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def acceptance_per_pos(self) -> list[float]:
        """vLLM's figure: accepted at position i per forward (SDSAT: SAT-only forwards included)."""
        return [a / self.num_drafts if self.num_drafts else 0.0 for a in self.accepted_per_pos]

    @property
    def num_real_draft_steps(self) -> float | None:
        """Forwards that offered a real draft at each position < draft_len (exact when none was trimmed)."""
        return self.num_draft_tokens / self.draft_len if self.draft_len else None

    @property
    def real_draft_acceptance_per_pos(self) -> list[float] | None:
        """Accepted at position i / steps with a real draft at position i; None without draft_len."""
        steps = self.num_real_draft_steps
        if steps is None:
            return None
        return [a / steps if steps else 0.0 for a in self.accepted_per_pos]

    def __sub__(self, other: "SpecDecodeSummary") -> "SpecDecodeSummary":
        if None not in (self.draft_len, other.draft_len) and self.draft_len != other.draft_len:
            raise ValueError(f"draft_len differs: {self.draft_len} vs {other.draft_len}")
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        a = self.accepted_per_pos + [0] * (n - len(self.accepted_per_pos))
        b = other.accepted_per_pos + [0] * (n - len(other.accepted_per_pos))
        return SpecDecodeSummary(self.num_drafts - other.num_drafts, self.num_draft_tokens - other.num_draft_tokens,
                                 self.num_accepted_tokens - other.num_accepted_tokens, [x - y for x, y in zip(a, b)],
                                 self.draft_len if self.draft_len is not None else other.draft_len)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(tau=self.tau, acceptance_rate=self.acceptance_rate, acceptance_per_pos=self.acceptance_per_pos,
                 num_real_draft_steps=self.num_real_draft_steps,
                 real_draft_acceptance_per_pos=self.real_draft_acceptance_per_pos)
        return d

    def describe(self) -> str:
        def fmt(rates: list[float] | None) -> str:
            return "-" if rates is None else "[" + ", ".join(f"{r:.2f}" for r in rates) + "]"

        return (f"tau={self.tau:.2f} tokens/forward, acceptance={self.acceptance_rate:.1%} "
                f"({self.num_accepted_tokens}/{self.num_draft_tokens} draft tokens over {self.num_drafts} forwards), "
                f"per position: real drafts {fmt(self.real_draft_acceptance_per_pos)}, "
                f"per forward (vLLM) {fmt(self.acceptance_per_pos)}")


def summary_from_steps(steps: Iterable[tuple[int, int]], draft_len: int | None = None) -> SpecDecodeSummary:
    """Fold (real drafts offered, accepted) per verify forward into vLLM's counters.

    What vLLM's SpecDecodingStats.observe_draft does once per forward with speculative tokens,
    with the SAT tail excluded: a SAT-only forward is (0, 0) and still counts in num_drafts.
    """
    steps = list(steps)
    s = SpecDecodeSummary(accepted_per_pos=[0] * max([draft_len or 0] + [o for o, _ in steps]), draft_len=draft_len)
    for offered, accepted in steps:
        if not 0 <= accepted <= offered:
            raise ValueError(f"accepted {accepted} of {offered} offered")
        s.num_drafts += 1
        s.num_draft_tokens += offered
        s.num_accepted_tokens += accepted
        for i in range(accepted):  # accepted drafts are a prefix: positions 0..accepted-1
            s.accepted_per_pos[i] += 1
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
            s.accepted_per_pos = [int(v) for v in m.values]
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
        s.accepted_per_pos = [per.get(i, 0) for i in range(max(per) + 1)]
    return s
