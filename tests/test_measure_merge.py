"""benchmarks/measure_merge.py's two figures on hand-built inputs: how greedy outputs differ, and
perplexity over the predictable tokens only, with the SAT logits masked."""

from __future__ import annotations

import math

import torch
from benchmark_scripts import load_benchmark



def _script():
    return load_benchmark("measure_merge")


def test_compare_outputs_counts_differences_and_where_they_start():
    m = _script()
    base = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    merged = [[1, 2, 3, 4], [5, 9], [7, 8]]  # second differs at 1, third is cut early (differs at 2)
    g = m.compare_outputs(base, merged)
    assert g["differing"] == 2 and math.isclose(g["differing_fraction"], 2 / 3)
    assert g["mean_first_difference"] == 1.5
    assert g["mean_tokens_base"] == 3.0 and g["mean_tokens_merged"] == 8 / 3
    assert m.compare_outputs(base, base)["mean_first_difference"] is None


class _FixedLogits(torch.nn.Module):
    """Logits that do not depend on the input: token 0 gets `a`, token 1 gets `b`, token 2 (the 'SAT') `c`."""

    def __init__(self, a, b, c):
        super().__init__()
        self.row = torch.tensor([a, b, c])

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.row.expand(*input_ids.shape, 3).clone()})()


def test_perplexity_masks_sats_and_skips_unpredictable_tokens():
    from sdsat_vllm.training.data import TokenRows

    m = _script()
    ids = torch.tensor([[0, 1, 0, 1]])
    ok = torch.tensor([[False, True, True, True]])
    model = _FixedLogits(0.0, 0.0, 5.0)
    # SAT masked: p(0) = p(1) = 1/2 at every position, perplexity exactly 2
    assert math.isclose(m.perplexity(model, TokenRows(ids, ok), [2]), 2.0, rel_tol=1e-6)
    # unmasked, the SAT takes most of the mass and the perplexity of the same text is far higher
    assert m.perplexity(model, TokenRows(ids, ok), []) > 50
    # a target that may not be predicted is skipped: a masked SAT there would make the perplexity infinite
    ids2 = torch.tensor([[0, 1, 0, 2]])
    assert math.isinf(m.perplexity(model, TokenRows(ids2, ok), [2]))
    ok2 = torch.tensor([[False, True, True, False]])
    assert math.isclose(m.perplexity(model, TokenRows(ids2, ok2), [2]), 2.0, rel_tol=1e-6)


def test_repeated_share_counts_tokens_that_end_an_earlier_8_gram():
    m = _script()
    fresh = list(range(40))
    assert m.repeated_share([fresh]) == 0.0
    loop = list(range(10)) * 4  # from token 18 on, every token ends an 8-gram seen 10 tokens earlier
    assert m.repeated_share([loop]) == (40 - 17) / 40
    assert m.repeated_share([fresh, loop]) == (40 - 17) / 80
    assert m.repeated_share([[1] * 7]) == 0.0 and m.repeated_share([]) == 0.0
    g = m.compare_outputs([fresh], [loop])
    assert g["repeated_share_base"] == 0.0 and g["repeated_share_merged"] > 0.5
