"""Decoding metrics (DESIGN.md 1.4), per call and aggregated over calls.

Names follow vLLM's spec-decode counters where there is one:
    num_drafts                   verification steps that carried at least one draft
    num_draft_tokens             draft tokens offered to verification (tree: nodes)
    num_accepted_tokens          drafts accepted
    num_accepted_tokens_per_pos  [depth] accepted drafts at draft position i (0-based)
and the SDSAT ones:
    num_forwards                 target-model forwards, prefill included (ar: one per token)
    tau                          tokens per target forward = num_new_tokens / num_forwards
    num_sat_tokens               SAT-tail positions computed. They are not rejected drafts, they
                                 are the drafting itself, so they are counted apart.
`acceptance_per_pos` is the real-draft figure: accepted / drafted at that position, over the steps
that offered a draft there (a top-k tree offers a depth only where its shape reaches it). It is
what the vLLM helper calls `SpecDecodeSummary.real_draft_acceptance_per_pos`, not vLLM's
per-forward `acceptance_per_pos` (accepted_per_pos[i] / num_drafts, SAT-only forwards included).
`mean_acceptance_length` is vLLM's 1 + accepted / drafts (here drafts = steps with a real draft).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


@dataclass(slots=True)
class DecodeMetrics:
    mode: str = ""
    num_calls: int = 0
    num_prompt_tokens: int = 0
    num_new_tokens: int = 0
    num_forwards: int = 0
    num_input_tokens: int = 0  # tokens through the model, prompt and SATs included
    num_sat_tokens: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_drafted_per_pos: list[int] = field(default_factory=list)
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0

    # ------------------------------------------------------------------ recording
    def record_verify(self, drafted_depths: Iterable[int], num_accepted: int) -> None:
        """One verification step: the depths (1-based) of the offered drafts, and how many were accepted."""
        depths = list(drafted_depths)
        if not depths:
            return
        self.num_drafts += 1
        self.num_draft_tokens += len(depths)
        self.num_accepted_tokens += num_accepted
        counts = [0] * max(depths)
        for d in depths:
            counts[d - 1] += 1
        # a tree may offer several nodes at one depth: per position, count "offered" once
        offered = [1 if c else 0 for c in counts]
        self.num_drafted_per_pos = _add_lists(self.num_drafted_per_pos, offered)
        self.num_accepted_tokens_per_pos = _add_lists(self.num_accepted_tokens_per_pos, [1] * num_accepted)

    # ------------------------------------------------------------------ derived
    @property
    def tau(self) -> float:
        return self.num_new_tokens / self.num_forwards if self.num_forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_new_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def acceptance_per_pos(self) -> list[float]:
        """Real drafts: accepted / offered at each position (vLLM helper: real_draft_acceptance_per_pos)."""
        acc = self.num_accepted_tokens_per_pos
        return [(acc[i] if i < len(acc) else 0) / d if d else 0.0 for i, d in enumerate(self.num_drafted_per_pos)]

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    # ------------------------------------------------------------------ aggregation
    def __add__(self, other: "DecodeMetrics") -> "DecodeMetrics":
        if not isinstance(other, DecodeMetrics):
            return NotImplemented
        modes = {m for m in (self.mode, other.mode) if m}
        out = DecodeMetrics(mode=modes.pop() if len(modes) == 1 else ("mixed" if modes else ""))
        for f in fields(DecodeMetrics):
            if f.name == "mode":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, _add_lists(a, b) if isinstance(a, list) else a + b)
        return out

    @classmethod
    def aggregate(cls, items: Iterable["DecodeMetrics"]) -> "DecodeMetrics":
        total = cls()
        for m in items:
            total = total + m
        return total

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tau=self.tau, tokens_per_s=self.tokens_per_s, acceptance_rate=self.acceptance_rate,
                 acceptance_per_pos=self.acceptance_per_pos, mean_acceptance_length=self.mean_acceptance_length)
        return d

    def summary(self) -> str:
        acc = " ".join(f"{a:.2f}" for a in self.acceptance_per_pos) or "-"
        return (f"{self.mode or '?':>9}: tau {self.tau:.2f}  tokens {self.num_new_tokens}  forwards {self.num_forwards}  "
                f"{self.tokens_per_s:.1f} tok/s  acceptance/pos [{acc}]  SAT tokens {self.num_sat_tokens}")
