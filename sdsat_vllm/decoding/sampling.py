"""Target distributions: logits -> the distribution plain decoding would sample from.

The same function serves `ar` and every speculative mode, so "lossless" has one meaning: the
committed tokens have exactly the distribution of `sample(target_probs(logits))` at each position.

Order of processing (as transformers' and vLLM's samplers): SAT ids masked (a SAT is never a
target token), then temperature, then top-k, then top-p. temperature == 0 means greedy (argmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

GREEDY_TEMPERATURE = 0.0


@dataclass(slots=True, frozen=True)
class SamplingParams:
    temperature: float = GREEDY_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be >= 1, or 0/-1 to disable it, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == GREEDY_TEMPERATURE


def mask_token_ids(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Set the logits of `token_ids` (the SATs) to -inf, out of place.

    logits: [..., vocab_size]
    """
    if not token_ids:
        return logits
    logits = logits.clone()
    logits[..., list(token_ids)] = float("-inf")
    return logits


def apply_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top_k logits, then the smallest set whose probability reaches top_p (always >= 1).

    logits: [num_rows, vocab_size] (temperature already applied); returns the same shape with the
    removed entries at -inf.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= 1.0 - top_p
        remove_sorted[..., -1] = False  # keep at least the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def target_probs(logits: torch.Tensor, params: SamplingParams, sat_ids: Sequence[int] = ()) -> torch.Tensor:
    """The target distribution of each row.

    logits:  [num_rows, vocab_size]
    Returns: [num_rows, vocab_size] float32 probabilities; for greedy, the one-hot of the argmax.
    """
    logits = mask_token_ids(logits.float(), sat_ids)
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = apply_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    return logits.softmax(dim=-1)


def sample_from(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from a distribution.

    probs: [vocab_size]
    """
    return int(torch.multinomial(probs, 1, generator=generator))


def greedy_drafts(logits: torch.Tensor, sat_ids: Sequence[int] = ()) -> list[int]:
    """The draft of each SAT position: its argmax, SATs excluded (a SAT draft is never accepted).

    logits: [num_sat, vocab_size]
    """
    return mask_token_ids(logits.float(), sat_ids).argmax(dim=-1).tolist()


def topk_drafts(logits: torch.Tensor, k: int, sat_ids: Sequence[int] = ()) -> torch.Tensor:
    """The k best candidates of each SAT position, best first, SATs excluded.

    logits:  [num_sat, vocab_size]
    Returns: [num_sat, k] token ids
    """
    return torch.topk(mask_token_ids(logits.float(), sat_ids), k, dim=-1).indices
