"""SDSAT's `tree` mode in vLLM: every verify forward also drafts, whatever was accepted.

Glossary (one request, one step; m real drafts, SAT blocks of length t, design section 4.7):

- chain: ``x, d_1..d_m``, the last committed token and the real drafts. vLLM lays them out as any
  draft chain (consecutive positions, causal attention) and its rejection sampler verifies
  d_1..d_m exactly as in `fused` mode.
- block ``B_b`` (b = 0..m): t SATs anchored at d_b (at x for b = 0). Its tokens follow the chain
  in the draft list, B_0 first, so the first SAT vLLM verifies is B_0's first, right after d_m:
  SAT logits are -inf, it is rejected, and the token recovered there is the plain next token
  after d_m (the same argument as `fused`, decoding/verify.py). A block's positions continue from
  its anchor's, and it attends to the context, x, d_1..d_b and its own earlier SATs only: the
  training layout of a block anchored at d_b, so its argmaxes draft the tokens after d_b's next.
- accepted count a: vLLM committed d_1..d_a and the recovered/bonus token y. Block B_a saw exactly
  the committed sequence before y, so its argmaxes are the next step's drafts: no SAT-only step
  after a rejection, one forward per step always (against `fused`, whose SAT rows are stale after
  any rejection). The price: 1 + m + (m + 1) t tokens a step instead of 1 + m + t.

vLLM computes every block row with causal attention over the slots before it, so two things are
rewritten per step (this module computes them; patches.py applies them): the block tokens'
positions (after ``GPUModelRunner._prepare_inputs``, which already placed their K/V in their own
slots) and the block rows' attention (tree_attention.py). The scheduler may cut a draft list short
(token budget, max_model_len): a prefix of the layout is still a valid layout, and a block cut
short drafts nothing.

Everything here is pure and tested with hand-built inputs (tests/vllm_plugin/test_tree_step.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..decoding.tree import MAX_MASK_BITS, ancestor_mask_words, chain_layout, tree_step_tensors
from .policy import drafts_that_fit
from .proposer import DraftPlan, count_trailing_sats


def max_tree_drafts(block_len: int) -> int:
    """The most real drafts whose tree step fits one 64-bit mask word: 1 + m + (m + 1) t <= 64."""
    return (MAX_MASK_BITS - 1 - block_len) // (1 + block_len)


def tree_draft_list(drafts: Sequence[int], block: Sequence[int]) -> list[int]:
    """What the proposer hands vLLM for one request: ``d_1..d_m`` then m + 1 copies of the block."""
    return [int(d) for d in drafts] + list(block) * (len(drafts) + 1)


@functools.lru_cache(maxsize=256)
def _layout(num_drafts: int, block_len: int, q_len: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(depths, mask words) of the first q_len tokens of ``[x, d_1..d_m, B_0..B_m]``."""
    layout = chain_layout([0], [0] * num_drafts, [0] * block_len, block_at="all")
    if q_len > layout.q_len:
        raise ValueError(f"a tree step with {num_drafts} drafts and blocks of {block_len} has {layout.q_len} "
                         f"tokens, but {q_len} were scheduled")
    t = tree_step_tensors(layout)
    words = ancestor_mask_words(t.ancestors[:q_len, :q_len])
    return tuple(t.depths[:q_len].tolist()), tuple(words.tolist())


@dataclass(frozen=True, slots=True)
class TreeStep:
    """What one vLLM step's tree requests need besides what vLLM computed (None: no tree request).

    Index spaces: *step index* = the token's index in the step's flattened input (vLLM's
    query_start_loc); *tree index* = index into the tree requests' tokens, concatenated in row
    order (`token_index` maps tree index -> step index).
    """

    # total tokens the step schedules: the attention patch refuses a forward of another size
    num_tokens: int
    # [R] input-batch rows of the tree requests
    rows: torch.Tensor
    # [R + 1] int32 start of each tree request in tree index space
    cu_q: torch.Tensor
    # [R] int32 cached + new tokens of each tree request
    seq_lens: torch.Tensor
    # [T] int64 step index of each tree token
    token_index: torch.Tensor
    # [T] int64 ancestor bits over the request's new tokens (bit j: may attend to its new token j)
    mask_words: torch.Tensor
    # [X] int64 tree indices of the block tokens (the rows causal attention got wrong), and
    # [X] their step indices
    block_tree_index: torch.Tensor
    block_step_index: torch.Tensor
    # [X] int64 the block tokens' positions (their anchor's position + 1 + offset in the block)
    block_positions: torch.Tensor


def plan_tree_step(spec_tokens: Sequence[Sequence[int] | None], num_scheduled: Sequence[int],
                   num_computed: Sequence[int], sat_ids: Sequence[int], block_len: int) -> TreeStep | None:
    """The step's tree requests, from what vLLM scheduled (per input-batch row, in order).

    spec_tokens[row]: the draft tokens scheduled for the row (vLLM's scheduled_spec_decode_tokens,
    maybe cut short), None or empty when it has none. num_scheduled[row]: the row's tokens in the
    step (1 + its drafts for a decode row). num_computed[row]: tokens already in its KV cache
    (the position of x). A row is a tree request when it carries real drafts and at least one SAT
    after them; [x, B_0] alone (a SAT-only step) is a plain chain.
    """
    sat_set = frozenset(sat_ids)
    rows, cu, seq_lens, token_index, words = [], [0], [], [], []
    block_tree, block_step, block_pos = [], [], []
    start = 0
    for row, (spec, q_len, done) in enumerate(zip(spec_tokens, num_scheduled, num_computed)):
        q_len, done = int(q_len), int(done)
        spec = list(spec or ())
        n_sat = count_trailing_sats(spec, sat_set)
        m = len(spec) - n_sat
        if m and n_sat and q_len == 1 + len(spec):
            if any(t in sat_set for t in spec[:m]):
                raise ValueError(f"row {row}: a SAT among the real drafts {spec[:m]}: not a tree draft list")
            if n_sat > (m + 1) * block_len:
                raise ValueError(f"row {row}: {n_sat} SATs after {m} drafts, more than {m + 1} blocks of {block_len}")
            depths, w = _layout(m, block_len, q_len)
            t0 = len(token_index)
            rows.append(row)
            seq_lens.append(done + q_len)
            token_index.extend(range(start, start + q_len))
            words.extend(w)
            cu.append(len(token_index))
            for i in range(1 + m, q_len):  # the block tokens
                block_tree.append(t0 + i)
                block_step.append(start + i)
                block_pos.append(done + depths[i])
        start += q_len
    if not rows:
        return None
    long = functools.partial(torch.tensor, dtype=torch.long)
    return TreeStep(num_tokens=start, rows=long(rows), cu_q=torch.tensor(cu, dtype=torch.int32),
                    seq_lens=torch.tensor(seq_lens, dtype=torch.int32), token_index=long(token_index),
                    mask_words=long(words), block_tree_index=long(block_tree), block_step_index=long(block_step),
                    block_positions=long(block_pos))


def plan_tree_drafts(
    sampled_token_ids: Sequence[Sequence[int]],
    verified_drafts: Sequence[Sequence[int]],
    num_draft_tokens: Sequence[int] | None,
    cu_num_sampled_tokens: Sequence[int] | None,
    sat_ids: Sequence[int],
    block_len: int,
) -> DraftPlan:
    """The tree-mode per-row rule (pure), in `plan_drafts`' terms (proposer.py).

    verified_drafts[row] = ``d_1..d_m`` then the SAT blocks (maybe cut short by the scheduler), as
    `tree_draft_list` built them; a accepted drafts (len(sampled) - 1): the fresh rows are block
    B_a's, at draft indices m + a t .. m + (a + 1) t - 1, i.e. logits rows first + 1 + those
    (first = the row of x = cu[row] - num_draft[row] - 1). A row whose block B_a was not
    scheduled whole, or whose draft list was no tree list, gets the SAT-only list (the block).
    """
    block = list(sat_ids[:block_len])
    sat_set = frozenset(sat_ids)
    drafts: list[list[int] | None] = []
    gather: list[int] = []
    rows_for: dict[int, tuple[int, int]] = {}
    for row, acc in enumerate(sampled_token_ids):
        if not acc:
            drafts.append([])
            continue
        prev = list(verified_drafts[row]) if row < len(verified_drafts) else []
        if num_draft_tokens is None or cu_num_sampled_tokens is None or num_draft_tokens[row] != len(prev):
            drafts.append(list(block))
            continue
        m = len(prev) - count_trailing_sats(prev, sat_set)
        a = len(acc) - 1
        lo, hi = m + a * block_len, m + (a + 1) * block_len
        if not prev or a > m or hi > len(prev):
            drafts.append(list(block))
            continue
        first = int(cu_num_sampled_tokens[row]) - len(prev) - 1
        rows_for[row] = (len(gather), block_len)
        gather.extend(range(first + 1 + lo, first + 1 + hi))
        drafts.append(None)
    return DraftPlan(drafts, gather, rows_for)


def fill_tree_drafts(plan: DraftPlan, argmaxes: Sequence[int], block: Sequence[int], cap: int,
                     room: Mapping[int, int] | None = None) -> list[list[int]]:
    """The draft lists: a row with fresh rows gets its first `cap` argmaxes and a block after each
    (and after x); a row without gets the block alone; cap 0 (vLLM's per-batch-size count says no
    speculation) or a row that sampled nothing gets []. room[row]: the tokens the row's request may
    still produce after this step (proposer.tokens_left; rows not in it are unbounded): at most
    room - 1 drafts can land, and block B_b drafts the step after b accepted drafts, which has room
    for its drafts only if b <= room - 3, so the list keeps B_0..B_{room - 3} (a prefix of the
    layout, valid as a cut by the scheduler is; with room 2 or less, no block)."""
    out: list[list[int]] = []
    for row, d in enumerate(plan.drafts):
        left = None if room is None else room.get(row)
        row_cap = drafts_that_fit(cap, left)
        if d is not None and not d or row_cap <= 0:
            out.append([])
            continue
        drafts: Sequence[int] = []
        if d is None:
            off, cnt = plan.rows_for[row]
            drafts = argmaxes[off:off + min(cnt, row_cap)]
        full = tree_draft_list(drafts, block)
        if left is not None:
            blocks = max(0, min(len(drafts), left - 3) + 1)
            full = full[: len(drafts) + blocks * len(block)]
        out.append(full)
    return out


__all__ = ["TreeStep", "plan_tree_step", "plan_tree_drafts", "fill_tree_drafts", "tree_draft_list",
           "max_tree_drafts"]
