"""KV bookkeeping: what is kept after crop/gather is exactly the KV of the committed tokens."""

import torch
from transformers import DynamicCache

from decoding_helpers import tiny_sdsat
from sdsat_vllm.decoding.kv_cache import crop_cache, keep_cache_entries
from sdsat_vllm.decoding.tree import ROOT, build_tree_attention_mask, make_layout, tree_position_ids


def _prefill(model, ids):
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return cache


@torch.no_grad()
def test_crop_then_continue_equals_fresh_forward():
    model, _, _ = tiny_sdsat("llama")
    cache = _prefill(model, [5, 6, 7, 8, 9, 10])
    crop_cache(cache, 4)
    assert cache.get_seq_length() == 4
    out = model(input_ids=torch.tensor([[11]]), past_key_values=cache, position_ids=torch.tensor([[4]])).logits[0, -1]
    ref = model(input_ids=torch.tensor([[5, 6, 7, 8, 11]])).logits[0, -1]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_gather_an_accepted_tree_path_then_continue_equals_fresh_forward():
    model, _, _ = tiny_sdsat("qwen2")
    context = [5, 6, 7]
    cache = _prefill(model, context)
    past = cache.get_seq_length()
    # head [8]; nodes 20, 21 (children of the root), 22 under 21; a SAT block at the root
    layout = make_layout([8], [20, 21, 22], [ROOT, ROOT, 1], [ROOT], [384, 384])
    model(input_ids=torch.tensor([layout.input_ids]), past_key_values=cache, use_cache=True,
          position_ids=tree_position_ids(layout.parents, past),
          attention_mask=build_tree_attention_mask(layout.parents, past, model.dtype))
    # accept the path 21 -> 22 (nodes 1, 2): keep the head and those nodes
    keep_cache_entries(cache, past, [0, layout.node(1), layout.node(2)])
    assert cache.get_seq_length() == past + 3
    committed = context + [8, 21, 22]
    out = model(input_ids=torch.tensor([[30]]), past_key_values=cache,
                position_ids=torch.tensor([[len(committed)]])).logits[0, -1]
    ref = model(input_ids=torch.tensor([committed + [30]])).logits[0, -1]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
