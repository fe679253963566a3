"""KV-cache bookkeeping on transformers' DynamicCache: drop what verification rejected, never
recompute what it accepted.

Invariant kept by the engine: the cache holds the KV of every committed token except the last one
(the last committed token is the next forward's root). After a forward over [head, drafts, SATs],
the entries to keep are the head and the accepted drafts:
  * chain modes: the accepted drafts are the first ones, right after the head -> `crop_cache`;
  * top-k trees: the accepted path is scattered among the nodes -> `keep_cache_entries` gathers it
    (a copy of the kept KV, not a recomputation).
SAT entries are always dropped: they come last in every layout.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"expected a transformers DynamicCache (with .layers), got {type(cache).__name__}")
    for layer in layers:
        if not (hasattr(layer, "keys") and hasattr(layer, "values")) or getattr(layer, "is_sliding", False):
            raise TypeError(
                f"the SDSAT engine needs full-attention KV layers it can crop; got {type(layer).__name__} "
                "(sliding-window or linear-attention layers are not supported by this engine)"
            )
    return layers


def cache_length(cache) -> int:
    return int(cache.get_seq_length())


def crop_cache(cache, length: int) -> None:
    """Keep the first `length` positions of every layer (in place)."""
    current = cache_length(cache)
    if length > current:
        raise ValueError(f"cannot crop a cache of length {current} to {length}")
    if length == current:
        return
    for layer in _layers(cache):
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        # keys, values: [batch, num_kv_heads, seq_len, head_dim]
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = length


def keep_cache_entries(cache, past_len: int, keep: Sequence[int]) -> None:
    """Keep the first past_len positions plus the new positions past_len + keep[i] (in order).

    keep: [num_keep] offsets among the last forward's new tokens, increasing
    """
    keep = list(keep)
    if keep == list(range(len(keep))):
        crop_cache(cache, past_len + len(keep))
        return
    for layer in _layers(cache):
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        device = layer.keys.device
        # [past_len + num_keep]
        index = torch.cat([torch.arange(past_len, device=device),
                           torch.tensor(keep, dtype=torch.long, device=device) + past_len])
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = past_len + len(keep)
