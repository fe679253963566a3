"""Decoding metrics of the engine, per call and aggregated over calls.

Every name means what the glossary in sdsat_vllm/metrics_vocabulary.py says (docs/design.md,
section 7): the counters vLLM has keep vLLM's names and meanings, so a figure here and the same
figure from vLLM's counters (`SpecDecodeSummary`) are comparable. What the engine counts:

    num_forwards                 target forwards, prefill included (ar: one per token)
    num_drafts                   decode forwards that carried drafts or a SAT block (vLLM counts
                                 the SAT tail as speculative tokens): every decode forward of a
                                 speculative mode, none in ar
    num_draft_steps              verification steps that offered at least one real draft
    num_draft_tokens             real drafts offered to verification (tree: nodes)
    num_accepted_tokens          real drafts accepted
    num_draft_steps_per_pos      [depth] steps that offered a real draft at position i (0-based)
    num_accepted_tokens_per_pos  [depth] steps that accepted the draft at position i
    num_sat_tokens               SAT positions computed: the drafting itself, not rejected drafts
    tokens_per_forward (τ)       num_new_tokens / num_forwards

The other figures (acceptance_rate, mean_acceptance_length, acceptance_rate_per_pos,
real_draft_mean_acceptance_length, real_draft_acceptance_rate_per_pos, tokens_per_decode_forward)
come from `SpecDecodeFigures`, defined once for the engine and the vLLM plugin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

from ..metrics_vocabulary import SpecDecodeFigures, tokens_per_forward


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


@dataclass(slots=True)
class DecodeMetrics(SpecDecodeFigures):
    mode: str = ""
    num_calls: int = 0
    num_prompt_tokens: int = 0
    num_new_tokens: int = 0
    num_forwards: int = 0
    num_input_tokens: int = 0  # tokens through the model, prompt and SATs included
    num_sat_tokens: int = 0
    num_drafts: int = 0
    num_draft_steps: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_draft_steps_per_pos: list[int] = field(default_factory=list)
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0

    # ------------------------------------------------------------------ recording
    def record_verify(self, drafted_depths: Iterable[int], num_accepted: int) -> None:
        """One verification step: the depths (1-based) of the offered drafts, and how many were accepted."""
        depths = list(drafted_depths)
        if not depths:
            return
        self.num_draft_steps += 1
        self.num_draft_tokens += len(depths)
        self.num_accepted_tokens += num_accepted
        counts = [0] * max(depths)
        for d in depths:
            counts[d - 1] += 1
        # a tree may offer several nodes at one depth: per position, count "offered" once
        offered = [1 if c else 0 for c in counts]
        self.num_draft_steps_per_pos = _add_lists(self.num_draft_steps_per_pos, offered)
        self.num_accepted_tokens_per_pos = _add_lists(self.num_accepted_tokens_per_pos, [1] * num_accepted)

    # ------------------------------------------------------------------ derived
    @property
    def num_decoded_tokens(self) -> int:
        """New tokens but the one each call's prefill forward commits."""
        return self.num_new_tokens - self.num_calls

    @property
    def num_decode_forwards(self) -> int:
        """Forwards but each call's prefill."""
        return self.num_forwards - self.num_calls

    @property
    def tokens_per_forward(self) -> float:
        return tokens_per_forward(self.num_new_tokens, self.num_forwards)

    @property
    def tokens_per_s(self) -> float:
        return self.num_new_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

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
        d.update(num_decoded_tokens=self.num_decoded_tokens, num_decode_forwards=self.num_decode_forwards,
                 tokens_per_forward=self.tokens_per_forward, tokens_per_s=self.tokens_per_s, **self.figures())
        return d

    def summary(self) -> str:
        acc = " ".join(f"{a:.2f}" for a in self.real_draft_acceptance_rate_per_pos) or "-"
        return (f"{self.mode or '?':>9}: tau {self.tokens_per_forward:.2f} tokens/forward  "
                f"tokens {self.num_new_tokens}  forwards {self.num_forwards}  {self.tokens_per_s:.1f} tok/s  "
                f"real-draft acceptance/pos [{acc}]  SAT tokens {self.num_sat_tokens}")
