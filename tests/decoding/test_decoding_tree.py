"""Layouts, positions, the tree attention mask (literal expected masks), tree shapes, and the
metamorphic check: every token of a tree forward equals the plain causal forward of its branch."""

import pytest
import torch
from transformers import DynamicCache

from decoding_helpers import tiny_sdsat
from sdsat_vllm.decoding.tree import (
    ROOT,
    build_tree_attention_mask,
    chain_layout,
    draft_tree_from_topk,
    full_tree_shape,
    make_layout,
    parse_tree_shape,
    tree_ancestor_mask,
    tree_position_ids,
    validate_tree_shape,
)

S = 99  # a SAT id


def test_chain_layout_is_causal():
    layout = chain_layout([10, 11, 12], [20, 21], [S, S], block_at="last")
    assert layout.input_ids == [10, 11, 12, 20, 21, S, S]
    assert layout.is_chain
    assert torch.equal(tree_ancestor_mask(layout.parents), torch.ones(7, 7, dtype=torch.bool).tril())
    assert tree_position_ids(layout.parents, past_len=5).tolist() == [[5, 6, 7, 8, 9, 10, 11]]


def test_tree_mode_layout_literal():
    # [x, d1, d2, B0(2 SATs), B1, B2]: B_j hangs off x (j=0) or d_j
    layout = chain_layout([7], [20, 21], [S, S], block_at="all")
    assert layout.input_ids == [7, 20, 21, S, S, S, S, S, S]
    assert layout.parents == [-1, 0, 1, 0, 3, 1, 5, 2, 7]
    assert layout.block_anchors == [0, 1, 2]
    assert not layout.is_chain
    # positions pos(x)+j+1+i: B0 at 1,2; B1 at 2,3; B2 at 3,4
    assert tree_position_ids(layout.parents, past_len=0).tolist() == [[0, 1, 2, 1, 2, 2, 3, 3, 4]]
    expected = torch.tensor([
        # x  d1 d2 B0 B0 B1 B1 B2 B2
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # x
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # d1
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # d2
        [1, 0, 0, 1, 0, 0, 0, 0, 0],  # B0 SAT1
        [1, 0, 0, 1, 1, 0, 0, 0, 0],  # B0 SAT2
        [1, 1, 0, 0, 0, 1, 0, 0, 0],  # B1 SAT1
        [1, 1, 0, 0, 0, 1, 1, 0, 0],  # B1 SAT2
        [1, 1, 1, 0, 0, 0, 0, 1, 0],  # B2 SAT1
        [1, 1, 1, 0, 0, 0, 0, 1, 1],  # B2 SAT2
    ], dtype=torch.bool)
    assert torch.equal(tree_ancestor_mask(layout.parents), expected)


def test_build_tree_attention_mask_form():
    parents = [-1, 0, 0, 1]  # a 2-branch tree
    mask = build_tree_attention_mask(parents, past_len=3, dtype=torch.float16)
    assert mask.shape == (1, 1, 4, 7) and mask.dtype == torch.float16
    allowed = mask[0, 0] == 0
    assert allowed[:, :3].all()  # the whole cache is visible to every new token
    assert torch.equal(allowed[:, 3:], torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]).bool())
    assert (mask[0, 0][~allowed] == torch.finfo(torch.float16).min).all()


def test_make_layout_validates():
    with pytest.raises(ValueError, match="at least one head token"):
        make_layout([], [1], [ROOT])
    with pytest.raises(ValueError, match="topological"):
        make_layout([1], [2, 3], [1, ROOT])


def test_tree_shapes():
    assert full_tree_shape([2, 1]) == ((0,), (1,), (0, 0), (1, 0))
    assert parse_tree_shape("2,1") == full_tree_shape([2, 1])
    assert parse_tree_shape("[[0],[0,0],[1]]") == ((0,), (0, 0), (1,))
    assert validate_tree_shape([[0, 0], [0], [1]], num_sat=2) == ((0,), (1,), (0, 0))
    with pytest.raises(ValueError, match="no parent path"):
        validate_tree_shape([[0], [1, 0]], num_sat=2)
    with pytest.raises(ValueError, match="deeper than num_sat"):
        validate_tree_shape([[0], [0, 0], [0, 0, 0]], num_sat=2)
    with pytest.raises(ValueError, match="empty"):
        validate_tree_shape([], num_sat=2)


def test_draft_tree_from_topk():
    topk = torch.tensor([[5, 6], [7, 8]])  # SAT 1's candidates, SAT 2's candidates
    tree = draft_tree_from_topk(topk, full_tree_shape([2, 2]))
    assert tree.token_ids == [5, 6, 7, 8, 7, 8]
    assert tree.parents == [ROOT, ROOT, 0, 0, 1, 1]
    assert tree.depths == [1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tree_forward_equals_each_branch_as_a_causal_chain(arch, attn):
    """Metamorphic: the logits of every token of a tree forward (with a KV cache) equal those of a
    plain causal forward over context + the token's branch."""
    model, _, _ = tiny_sdsat(arch)
    model.set_attn_implementation(attn)
    try:
        context = [5, 17, 42, 8, 99, 3]
        # head of 2 tokens, a top-k-like tree of 4 nodes, SAT blocks of 3 at the root and at node 2
        layout = make_layout([11, 12], [20, 21, 22, 23], [ROOT, ROOT, 0, 1], [ROOT, 2], [S, S, S])
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([context]), past_key_values=cache, use_cache=True)
            past = cache.get_seq_length()
            mask = build_tree_attention_mask(layout.parents, past, model.dtype)
            pos = tree_position_ids(layout.parents, past)
            tree_logits = model(input_ids=torch.tensor([layout.input_ids]), position_ids=pos, attention_mask=mask,
                                past_key_values=cache, use_cache=True).logits[0]
            assert cache.get_seq_length() == past + layout.q_len
            for i in range(layout.q_len):
                branch, node = [], i
                while node != -1:
                    branch.append(layout.input_ids[node])
                    node = layout.parents[node]
                ref = model(input_ids=torch.tensor([context + branch[::-1]])).logits[0, -1]
                torch.testing.assert_close(tree_logits[i], ref, atol=2e-5, rtol=1e-5)
    finally:
        model.set_attn_implementation("sdpa")
