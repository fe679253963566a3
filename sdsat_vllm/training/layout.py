"""The appended SAT-block training layout (docs/design.md, section 1.2).

Glossary
- standard tokens: the L corpus tokens x_0..x_{L-1} of a training sequence, at positions 0..L-1.
- insertion point p: a block of K SATs is appended "after x_p"; it stands for the tokens that
  follow x_{p+1} (x_{p+1} itself comes from the standard position p, exactly as at decode time,
  where the logit at the last committed token gives the next token and the SATs give the ones after).
- SAT j (1..K) of block p: position p+j, label x_{p+j+1}; attends to standard tokens <= p and to
  SATs 1..j of its own block. Standard tokens never see a SAT, so their outputs are those of the
  plain model on the plain sequence.

All M blocks of a sequence go after the L standard tokens in one forward: dense SAT supervision for
the price of L + M*K tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(slots=True)
class SATBatch:
    input_ids: torch.Tensor  # [B, L + M*K]  standard tokens, then M blocks of K SATs
    position_ids: torch.Tensor  # [B, L + M*K]
    allowed: torch.Tensor  # [B, L + M*K, L + M*K] bool: query row may attend to key column
    labels: torch.Tensor  # [B, L + M*K]  IGNORE_INDEX where there is nothing to predict
    sat_offsets: torch.Tensor  # [L + M*K]  0 for standard tokens, j (1..K) for SAT j
    insertion_points: torch.Tensor  # [B, M]
    num_standard: int  # L

    @property
    def num_sat(self) -> int:
        return int(self.sat_offsets.max())

    def to(self, device: torch.device | str) -> "SATBatch":
        """The same batch with its tensors on `device` (itself when they are there already)."""
        if self.input_ids.device == torch.device(device):
            return self
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def additive_mask(self, dtype: torch.dtype, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """[B, 1, q, kv] float mask (0 = attend, dtype min = blocked), the form transformers takes as-is."""
        allowed = self.allowed[:, rows, cols]
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, blocked)[:, None]


def sample_insertion_points(batch_size: int, seq_len: int, num_blocks: int, num_sat: int,
                            generator: torch.Generator | None = None,
                            preferred: torch.Tensor | None = None) -> torch.Tensor:
    """[B, M] distinct insertion points per row, sorted, each leaving room for K+1 labels after it.

    preferred: [B, L] bool, where a block may stand (e.g. after a token whose next token is drafted in
    serving); points are drawn among them first, and elsewhere only for a row that has fewer than M.
    None: anywhere (the same draws as without it)."""
    last = seq_len - num_sat - 2  # SAT K of block p is labelled x_{p+K+1}, which must exist
    if last < 0:
        raise ValueError(f"sequence length {seq_len} is too short for K={num_sat} SATs (need >= {num_sat + 2})")
    num_choices = last + 1
    if num_blocks > num_choices:
        raise ValueError(f"{num_blocks} SAT blocks do not fit in a sequence of {seq_len} tokens with K={num_sat}")
    scores = torch.rand(batch_size, num_choices, generator=generator)
    if preferred is not None:
        scores = scores + preferred[:, :num_choices].to(scores.dtype)  # a preferred point outranks every other
    return scores.topk(num_blocks, dim=1).indices.sort(dim=1).values


def build_sat_batch(input_ids: torch.Tensor, insertion_points: torch.Tensor, sat_token_ids,
                    label_ok: torch.Tensor | None = None) -> SATBatch:
    """Lay out one training batch.

    input_ids:        [B, L]  standard tokens
    insertion_points: [B, M]  p per block (SATs stand for x_{p+2}..x_{p+K+1})
    sat_token_ids:    K ids, the token of SAT j is sat_token_ids[j-1]
    label_ok:         [B, L]  bool, False where a token may not be predicted from what precedes it
                      (a document boundary, `data.TokenRows`); None: every token may
    """
    device = input_ids.device
    B, L = input_ids.shape
    M = insertion_points.shape[1]
    K = len(sat_token_ids)
    S = M * K
    T = L + S
    p = insertion_points.to(device)  # [B, M]
    if p.numel() and (p.min() < 0 or p.max() + K + 1 >= L):
        raise ValueError(f"insertion points must lie in 0..{L - K - 2} for L={L}, K={K}")
    j = torch.arange(1, K + 1, device=device)  # [K]

    sat_ids = torch.as_tensor(list(sat_token_ids), dtype=input_ids.dtype, device=device)
    ids = torch.cat([input_ids, sat_ids.repeat(M)[None].expand(B, S)], dim=1)

    std_pos = torch.arange(L, device=device)[None].expand(B, L)
    sat_pos = (p[:, :, None] + j).reshape(B, S)  # SAT j of block p sits at p+j
    position_ids = torch.cat([std_pos, sat_pos], dim=1)

    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=device)
    labels[:, : L - 1] = input_ids[:, 1:]
    labels[:, L:] = input_ids.gather(1, (p[:, :, None] + j + 1).reshape(B, S))
    if label_ok is not None:
        ok = label_ok.to(device)
        labels[:, : L - 1].masked_fill_(~ok[:, 1:], IGNORE_INDEX)
        # SAT j of block p predicts x_{p+j+1} from x_{<=p}: only if no boundary lies in x_{p+1..p+j+1}.
        bad_before = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=device), (~ok).long().cumsum(1)], 1)
        first, last = (p + 1)[:, :, None], (p[:, :, None] + j + 1)  # [B, M, 1], [B, M, K]
        crossed = bad_before.gather(1, (last + 1).reshape(B, S)) - bad_before.gather(1, first.expand(B, M, K).reshape(B, S))
        labels[:, L:].masked_fill_(crossed > 0, IGNORE_INDEX)

    # Attention. Standard block: causal. SAT rows: standard keys <= p, own-block SATs <= j.
    allowed = torch.zeros(B, T, T, dtype=torch.bool, device=device)
    allowed[:, :L, :L] = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    sat_p = p.repeat_interleave(K, dim=1)  # [B, S] insertion point of each SAT row
    allowed[:, L:, :L] = torch.arange(L, device=device)[None, None] <= sat_p[:, :, None]
    block = torch.arange(S, device=device) // K
    offset = torch.arange(S, device=device) % K
    same_block = block[:, None] == block[None, :]
    allowed[:, L:, L:] = (same_block & (offset[None, :] <= offset[:, None]))[None]

    sat_offsets = torch.cat([torch.zeros(L, dtype=torch.long, device=device), offset + 1])
    return SATBatch(ids, position_ids, allowed, labels, sat_offsets, p, L)
