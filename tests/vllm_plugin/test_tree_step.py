"""tree_step's pure rules with hand-built inputs: the step layout vLLM is given (positions, mask
words, the rows to recompute) and the drafts taken from block B_a. No vLLM needed."""

import pytest
import torch

from sdsat_vllm.decoding.tree import mask_words_to_bool
from sdsat_vllm.vllm_plugin.tree_step import (fill_tree_drafts, max_tree_drafts, plan_tree_drafts, plan_tree_step,
                                              tree_draft_list)

S = 900  # the SAT id (a block of t = 2 is [S, S])
SATS = [S, S, S]


def test_draft_list_is_drafts_then_a_block_after_x_and_each_draft():
    assert tree_draft_list([5, 6], [S, S]) == [5, 6, S, S, S, S, S, S]
    assert tree_draft_list([], [S, S]) == [S, S]  # the SAT-only step
    # 1 + m + (m + 1) t <= 64
    assert max_tree_drafts(5) == 9 and 1 + 7 + 8 * 7 == 64 and max_tree_drafts(7) == 7
    assert 1 + 8 + 9 * 8 > 64 and max_tree_drafts(8) < 8


def test_layout_positions_mask_and_block_rows_by_hand():
    # row 0: a prefill chunk of 4 tokens (no drafts); row 1: x, d1, d2, B0 = [S,S], B1, B2 (t = 2);
    # row 2: a SAT-only step [x, S, S] (a plain chain: not a tree request)
    spec = [None, [5, 6] + [S] * 6, [S, S]]
    step = plan_tree_step(spec, num_scheduled=[4, 9, 3], num_computed=[0, 20, 7], sat_ids=SATS, block_len=2)
    assert step is not None and step.num_tokens == 16
    assert step.rows.tolist() == [1]
    assert step.cu_q.tolist() == [0, 9] and step.seq_lens.tolist() == [29]
    assert step.token_index.tolist() == list(range(4, 13))
    # layout index: 0 x, 1 d1, 2 d2, 3-4 B0 (anchor x), 5-6 B1 (anchor d1), 7-8 B2 (anchor d2)
    want = torch.zeros(9, 9, dtype=torch.bool)
    ancestors = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 3], 4: [0, 3, 4], 5: [0, 1, 5], 6: [0, 1, 5, 6],
                 7: [0, 1, 2, 7], 8: [0, 1, 2, 7, 8]}
    for i, js in ancestors.items():
        want[i, js] = True
    assert torch.equal(mask_words_to_bool(step.mask_words, 9), want)
    # block rows only (the chain rows are causal already), with positions x + 1 + b + k
    assert step.block_tree_index.tolist() == [3, 4, 5, 6, 7, 8]
    assert step.block_step_index.tolist() == [7, 8, 9, 10, 11, 12]
    assert step.block_positions.tolist() == [21, 22, 22, 23, 23, 24]


def test_a_list_cut_short_by_the_scheduler_is_a_prefix_of_the_layout():
    spec = [[5, 6, 7] + [S] * 3]  # t = 2: B0 whole, B1 cut to one SAT
    step = plan_tree_step(spec, [7], [10], SATS, 2)
    assert step.block_positions.tolist() == [11, 12, 12]
    full = plan_tree_step([[5, 6, 7] + [S] * 8], [12], [10], SATS, 2)
    assert torch.equal(step.mask_words, full.mask_words[:7] & ((1 << 7) - 1))
    # cut inside the chain: no SAT scheduled, a plain chain
    assert plan_tree_step([[5, 6]], [3], [10], SATS, 2) is None


def test_rows_without_tree_lists_give_no_step():
    assert plan_tree_step([None, [], [S, S]], [5, 1, 3], [0, 9, 9], SATS, 2) is None


def test_a_malformed_tree_list_is_refused():
    with pytest.raises(ValueError, match="SAT among the real drafts"):
        plan_tree_step([[5, S, 6, S, S]], [6], [0], SATS, 2)
    with pytest.raises(ValueError, match="more than 2 blocks"):
        plan_tree_step([[5] + [S] * 5], [7], [0], SATS, 2)


def test_drafts_come_from_the_block_at_the_accepted_count():
    # one row: x, d1, d2 then B0, B1, B2 (t = 2): 8 drafts, logits rows 0..8 (cu = 9)
    prev = [[5, 6] + [S] * 6]
    for accepted, rows in ((0, [3, 4]), (1, [5, 6]), (2, [7, 8])):
        sampled = [[11] * (accepted + 1)]
        plan = plan_tree_drafts(sampled, prev, [8], [9], SATS, 2)
        assert plan.drafts == [None] and plan.gather == rows, accepted
    # second row of a batch: its rows start after the first row's 9
    plan = plan_tree_drafts([[1], [2, 3]], [[S, S], prev[0]], [2, 8], [3, 12], SATS, 2)
    assert plan.gather == [1, 2, 8, 9] and plan.rows_for == {0: (0, 2), 1: (2, 2)}
    lists = fill_tree_drafts(plan, [40, 41, 50, 51], [S, S], cap=2)
    assert lists == [[40, 41, S, S, S, S, S, S], [50, 51, S, S, S, S, S, S]]
    assert fill_tree_drafts(plan, [40, 41, 50, 51], [S, S], cap=1) == [[40, S, S, S, S], [50, S, S, S, S]]
    assert fill_tree_drafts(plan, [40, 41, 50, 51], [S, S], cap=0) == [[], []]


def test_tree_lists_keep_only_what_can_land_before_max_tokens():
    """room[row] tokens left after this step: at most room - 1 drafts, and blocks B_0..B_{room - 3}
    (B_b drafts the step after b accepted drafts, which needs room for a draft of its own)."""
    prev = [[5, 6] + [S] * 6]
    plan = plan_tree_drafts([[1, 2, 3]], prev, [8], [9], SATS, 2)  # both accepted: B2's rows are fresh
    argmaxes, block = [40, 41], [S, S]
    whole = [40, 41, S, S, S, S, S, S]
    assert fill_tree_drafts(plan, argmaxes, block, cap=2, room={}) == [whole]
    assert fill_tree_drafts(plan, argmaxes, block, cap=2, room={0: 5}) == [whole]  # B2: 5 - 3 drafts next step
    assert fill_tree_drafts(plan, argmaxes, block, cap=2, room={0: 4}) == [[40, 41, S, S, S, S]]
    assert fill_tree_drafts(plan, argmaxes, block, cap=2, room={0: 3}) == [[40, 41, S, S]]
    assert fill_tree_drafts(plan, argmaxes, block, cap=2, room={0: 2}) == [[40]]
    assert fill_tree_drafts(plan, argmaxes, block, cap=2, room={0: 1}) == [[]]
    # the SAT-only list (no fresh rows): its block drafts the next step, which needs room 3
    sat_only = plan_tree_drafts([[7]], [[]], None, None, SATS, 2)
    assert fill_tree_drafts(sat_only, [], block, cap=2, room={0: 3}) == [[S, S]]
    assert fill_tree_drafts(sat_only, [], block, cap=2, room={0: 2}) == [[]]


def test_no_fresh_block_falls_back_to_the_sat_only_list():
    prev = [[5, 6] + [S] * 3]  # B1 cut short: a = 1 has no whole block
    plan = plan_tree_drafts([[11, 12]], prev, [5], [6], SATS, 2)
    assert plan.drafts == [[S, S]] and plan.gather == []
    # a = 0: B0 was whole
    assert plan_tree_drafts([[11]], prev, [5], [6], SATS, 2).gather == [3, 4]
    # no metadata (after a prefill), a row that sampled nothing, a runner view that disagrees
    plan = plan_tree_drafts([[7], [], [8]], [[], [], [5, S, S, S, S]], None, None, SATS, 2)
    assert plan.drafts == [[S, S], [], [S, S]]
    plan = plan_tree_drafts([[8]], [[5, S, S, S, S]], [3], [4], SATS, 2)
    assert plan.drafts == [[S, S]]
    assert fill_tree_drafts(plan, [], [S, S], cap=2) == [[S, S]]
