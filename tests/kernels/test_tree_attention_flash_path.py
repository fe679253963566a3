"""Tree mode's GPU path (patch `tree_attention_flash`) with vLLM-shaped inputs: a vLLM step planned by
`plan_tree_step`, K/V in FlashAttention's cache layout (vLLM 0.32: logical [num_blocks, num_kv_heads,
block_size, 2 * head_dim], here stored block-major as [num_blocks, block_size, num_kv_heads, 2 * head_dim]),
the Triton kernel recomputing the SAT block rows after a causal kernel wrote every row.

Checked against a dense naive attention per block row. Runs on a GPU, or on CPU under
`TRITON_INTERPRET=1` (CI's kernels step); no GPU engine has run this path yet.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from tree_attention_cases import build_tree_case, naive_block_rows

from sdsat_vllm.kernels.tree_attention import split_kv_cache
from sdsat_vllm.vllm_plugin import tree_attention
from sdsat_vllm.vllm_plugin.patches import tree_attention_forward

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
SCALE = 0.25


def _device() -> str:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if not INTERPRET:
        pytest.skip("the Triton kernel on CPU needs TRITON_INTERPRET=1")
    return "cpu"


def flash_cache(num_blocks, num_kv_heads, block_size, head_dim):
    """FlashAttention's logical shape over block-major storage, NaN-filled."""
    kv = torch.full((num_blocks, block_size, num_kv_heads, 2 * head_dim), float("nan")).permute(0, 2, 1, 3)
    return (kv, *split_kv_cache(kv, head_dim))


def build(device, group=3):
    """The shared case with pages of 16 (request 0's new tokens cross a page boundary) and 3 rows of
    CUDA-graph padding, moved to `device`."""
    case = build_tree_case(flash_cache, group=group, block_size=16, num_computed=(13, 4, 30), pad=3)
    for name in ("query", "kv", "block_table"):
        setattr(case, name, getattr(case, name).to(device))
    return case


@pytest.mark.parametrize("group", [1, 3])
def test_triton_recompute_of_block_rows_equals_naive_attention(group):
    b = build(_device(), group=group)
    output = torch.full((b.query.shape[0], b.query.shape[1] * b.query.shape[2]), 7.0, device=b.query.device)
    tree_attention.recompute_block_rows_triton(b.step, b.query, b.kv, b.block_table, output, SCALE)
    want = naive_block_rows(b, SCALE)
    assert sorted(want) == b.step.block_step_index.tolist()
    got = output.cpu()
    for idx, row in want.items():
        torch.testing.assert_close(got[idx].view_as(row), row, rtol=2e-5, atol=2e-5)
    others = [i for i in range(got.shape[0]) if i not in want]
    assert bool((got[others] == 7.0).all()), "chain rows, the plain row and padding must stay as the causal kernel wrote them"


def test_flash_wrapper_recomputes_block_rows_only_in_the_tree_step():
    """The forward `tree_attention_flash` installs: FlashAttention's output, then the block rows; a
    no-op without an active step, for another forward size, for encoder attention, non-causal
    metadata or the profile run."""
    b = build(_device())
    calls = []

    def causal_kernel(self, layer, query, key, value, kv_cache, attn_metadata, output):
        calls.append(attn_metadata)
        output.fill_(7.0)  # stands in for FlashAttention: every row written
        return output

    forward = tree_attention_forward(causal_kernel, "recompute_block_rows_triton", "decoder")
    impl = SimpleNamespace(attn_type="decoder", scale=SCALE)
    num_tokens = b.step.num_tokens
    meta = SimpleNamespace(num_actual_tokens=num_tokens, block_table=b.block_table, causal=True)

    def run(impl=impl, meta=meta):
        output = torch.zeros(b.query.shape[0], b.query.shape[1] * b.query.shape[2], device=b.query.device)
        forward(impl, None, b.query, None, None, b.kv, meta, output)
        return output.cpu()

    tree_attention.set_active_step(None)
    assert bool((run() == 7.0).all())
    tree_attention.set_active_step(b.step)
    try:
        changed = (run() != 7.0).any(dim=1).nonzero().flatten().tolist()
        assert changed == b.step.block_step_index.tolist()
        other = SimpleNamespace(num_actual_tokens=num_tokens + 1, block_table=b.block_table, causal=True)
        assert bool((run(meta=other) == 7.0).all())
        assert bool((run(meta=SimpleNamespace(**{**vars(meta), "causal": False})) == 7.0).all())
        assert bool((run(impl=SimpleNamespace(attn_type="encoder", scale=SCALE)) == 7.0).all())
        assert bool((run(meta=None) == 7.0).all())
    finally:
        tree_attention.set_active_step(None)
    assert len(calls) == 6  # FlashAttention itself ran every time
