"""Tree mode's GPU path (patch `tree_attention_flash`) with vLLM-shaped inputs: a vLLM step planned by
`plan_tree_step`, K/V in FlashAttention's cache layout (vLLM 0.32: logical [num_blocks, num_kv_heads,
block_size, 2 * head_dim], here stored block-major as [num_blocks, block_size, num_kv_heads, 2 * head_dim]),
the Triton kernel recomputing the SAT block rows after a causal kernel wrote every row.

Checked against a dense naive attention per block row. Runs on a GPU, or on CPU under
`TRITON_INTERPRET=1` (CI's kernels step); no GPU engine has run this path yet.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from sdsat_vllm.decoding.tree import mask_words_to_bool
from sdsat_vllm.kernels.tree_attention import split_kv_cache
from sdsat_vllm.vllm_plugin import tree_attention
from sdsat_vllm.vllm_plugin.patches import tree_attention_forward
from sdsat_vllm.vllm_plugin.tree_step import plan_tree_step, tree_draft_list

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
S = 900  # the SAT id
SCALE = 0.25


def _device() -> str:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if not INTERPRET:
        pytest.skip("the Triton kernel on CPU needs TRITON_INTERPRET=1")
    return "cpu"


def build(device, num_kv_heads=2, group=3, head_dim=16, block_size=16, t=2, seed=0):
    """3 batch rows: a tree request (m = 3 drafts), a plain decode row, a tree request whose list the
    scheduler cut short (m = 2); pages shuffled, every slot no request owns NaN."""
    gen = torch.Generator().manual_seed(seed)
    spec = [tree_draft_list([5, 6, 7], [S] * t), None, tree_draft_list([8, 9], [S] * t)[:-1]]
    num_scheduled = [1 + len(spec[0]), 1, 1 + len(spec[2])]
    num_computed = [13, 4, 30]  # request 0 crosses a page boundary with its new tokens
    step = plan_tree_step(spec, num_scheduled, num_computed, [S] * 4, t)
    seq_lens = [c + q for c, q in zip(num_computed, num_scheduled)]
    pages = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(pages) + 2
    # physical block-major storage, seen through vLLM's logical shape
    kv = torch.full((num_blocks, block_size, num_kv_heads, 2 * head_dim), float("nan")).permute(0, 2, 1, 3)
    keys, values = split_kv_cache(kv, head_dim)
    perm = torch.randperm(num_blocks, generator=gen)
    block_table = torch.zeros(3, max(pages) + 1, dtype=torch.int32)
    per_req_kv, used = [], 0
    for r, n in enumerate(pages):
        block_table[r, :n] = perm[used:used + n].int()
        used += n
        k = torch.randn(seq_lens[r], num_kv_heads, head_dim, generator=gen)
        v = torch.randn(seq_lens[r], num_kv_heads, head_dim, generator=gen)
        p = torch.arange(seq_lens[r])
        b = block_table[r].long()[p // block_size]
        keys[b, p % block_size] = k
        values[b, p % block_size] = v
        per_req_kv.append((k, v))
    query = torch.randn(sum(num_scheduled) + 3, num_kv_heads * group, head_dim, generator=gen)  # + cudagraph padding
    return SimpleNamespace(step=step, query=query.to(device), kv=kv.to(device), block_table=block_table.to(device),
                           per_req_kv=per_req_kv, num_scheduled=num_scheduled, seq_lens=seq_lens)


def naive_block_rows(b) -> dict[int, torch.Tensor]:
    """{step index: [heads, head_dim]} dense softmax over the context and the row's ancestors."""
    step, query = b.step, b.query.cpu()
    starts = [sum(b.num_scheduled[:r]) for r in range(len(b.num_scheduled))]
    cu = step.cu_q.tolist()
    out = {}
    for i, row in enumerate(step.rows.tolist()):
        q_len = cu[i + 1] - cu[i]
        allowed_new = mask_words_to_bool(step.mask_words[cu[i]:cu[i + 1]], q_len)
        k, v = b.per_req_kv[row]
        ctx = b.seq_lens[row] - q_len
        group = query.shape[1] // k.shape[1]
        for tree_i in step.block_tree_index.tolist():
            if not cu[i] <= tree_i < cu[i + 1]:
                continue
            local = tree_i - cu[i]
            visible = torch.cat([torch.ones(ctx, dtype=torch.bool), allowed_new[local]])
            kk = k.repeat_interleave(group, 1)[visible]
            vv = v.repeat_interleave(group, 1)[visible]
            w = torch.softmax(torch.einsum("hd,nhd->hn", query[starts[row] + local], kk) * SCALE, -1)
            out[starts[row] + local] = torch.einsum("hn,nhd->hd", w, vv)
    return out


@pytest.mark.parametrize("group", [1, 3])
def test_triton_recompute_of_block_rows_equals_naive_attention(group):
    b = build(_device(), group=group)
    output = torch.full((b.query.shape[0], b.query.shape[1] * b.query.shape[2]), 7.0, device=b.query.device)
    tree_attention.recompute_block_rows_triton(b.step, b.query, b.kv, b.block_table, output, SCALE)
    want = naive_block_rows(b)
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

    forward = tree_attention_forward(causal_kernel, tree_attention.recompute_block_rows_triton, "decoder")
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
