"""The exact SDSAT decoding engine on transformers (the algorithm's reference implementation).

    from sdsat_vllm.decoding import SDSATGenerator
    gen = SDSATGenerator.from_pretrained("path/to/sdsat-model")
    out = gen.generate("def fib(n):", mode="tree", max_new_tokens=64)
    print(out.text, out.metrics.tokens_per_forward)

Files: generator.py (the loops, one per mode), tree.py (layouts, tree shapes, the tree attention
mask), verify.py (exact chain/tree verification), sampling.py (target distributions, SAT masking),
stopping.py (EOS/stop/max_new_tokens), kv_cache.py (crop/gather), metrics.py, cli.py.
Imports are lazy so that `sdsat --help` does not load torch.
"""

_EXPORTS = {
    "SDSATGenerator": "generator",
    "GenerationResult": "generator",
    "MODES": "generator",
    "DecodeMetrics": "metrics",
    "SamplingParams": "sampling",
    "build_tree_attention_mask": "tree",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
