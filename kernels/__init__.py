"""Triton kernels (installed as sdsat_vllm.kernels), each beside a pure-PyTorch reference.

tree_attention.py   verify-step attention over vLLM's paged KV cache with a per-query ancestor
                    mask (SDSAT `tree` mode): `paged_tree_attention` (Triton),
                    `paged_tree_attention_reference` (PyTorch), `split_kv_cache` and
                    `write_kv_cache` (vLLM's cache views and KV write, in PyTorch).

Importing this package imports neither triton nor the kernels; names resolve on first use, and
everything but the Triton launchers works without triton.
"""

_EXPORTS = {
    "paged_tree_attention": "tree_attention",
    "paged_tree_attention_reference": "tree_attention",
    "split_kv_cache": "tree_attention",
    "write_kv_cache": "tree_attention",
    "MAX_NEW_TOKENS": "tree_attention",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
