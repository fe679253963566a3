"""τ and acceptance from vLLM's own spec-decode metrics (no torch, no vLLM import needed).

With the SDSAT plugin, vLLM's counters mean (patch `spec_stats_exclude_sat`):

* ``num_drafts``: verify forwards of decoding requests. Every decode forward of an SDSAT request
  carries a SAT tail, so this counts all of them, SAT-only forwards included.
* ``num_draft_tokens``: real drafts only (the SAT tail is not counted).
* ``num_accepted_tokens``: accepted real drafts.
* ``num_accepted_tokens_per_pos[i]``: forwards in which draft position i was accepted.

So one decode forward commits ``1 + accepted`` tokens and

    τ (tokens per decode forward) = 1 + num_accepted_tokens / num_drafts
    acceptance rate (real drafts)  = num_accepted_tokens / num_draft_tokens
    acceptance at position i       = num_accepted_tokens_per_pos[i] / num_drafts

This is vLLM's "mean acceptance length", which for SDSAT is exactly tokens per target forward
(prefill forwards excluded). Prometheus exposes the same counters as
``vllm:spec_decode_num_drafts_total`` etc.
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

    @property
    def tau(self) -> float:
        """Tokens committed per decode forward (1.0 when nothing was drafted)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def acceptance_per_pos(self) -> list[float]:
        return [a / self.num_drafts if self.num_drafts else 0.0 for a in self.accepted_per_pos]

    def __sub__(self, other: "SpecDecodeSummary") -> "SpecDecodeSummary":
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        a = self.accepted_per_pos + [0] * (n - len(self.accepted_per_pos))
        b = other.accepted_per_pos + [0] * (n - len(other.accepted_per_pos))
        return SpecDecodeSummary(self.num_drafts - other.num_drafts, self.num_draft_tokens - other.num_draft_tokens,
                                 self.num_accepted_tokens - other.num_accepted_tokens, [x - y for x, y in zip(a, b)])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(tau=self.tau, acceptance_rate=self.acceptance_rate, acceptance_per_pos=self.acceptance_per_pos)
        return d

    def describe(self) -> str:
        per = ", ".join(f"{r:.2f}" for r in self.acceptance_per_pos)
        return (f"tau={self.tau:.2f} tokens/forward, acceptance={self.acceptance_rate:.1%} "
                f"({self.num_accepted_tokens}/{self.num_draft_tokens} drafts over {self.num_drafts} forwards), "
                f"per position [{per}]")


def from_llm_metrics(metrics: Iterable[Any]) -> SpecDecodeSummary:
    """From `LLM.get_metrics()` (vllm.v1.metrics.reader Counter/Vector objects)."""
    s = SpecDecodeSummary()
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


def from_prometheus(text: str) -> SpecDecodeSummary:
    """From the text of a `vllm serve` /metrics page (sums over engines/models)."""
    s = SpecDecodeSummary()
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
