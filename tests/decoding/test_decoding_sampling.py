"""Target distributions: the same processing as transformers' samplers, SATs masked out."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from sdsat_vllm.decoding.sampling import SamplingParams, greedy_drafts, target_probs, topk_drafts


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 7, 0.6)])
def test_target_probs_match_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    got = target_probs(logits, SamplingParams(temperature, top_p, top_k))
    torch.testing.assert_close(got, ref.softmax(-1))


def test_sat_ids_are_masked_everywhere():
    logits = torch.zeros(3, 10)
    logits[:, 9] = 100.0  # the SAT would win everything
    logits[:, 4] = 1.0
    for params in [SamplingParams(), SamplingParams(1.0), SamplingParams(0.5, top_p=0.5, top_k=2)]:
        p = target_probs(logits, params, sat_ids=[9])
        assert (p[:, 9] == 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(3))
    assert target_probs(logits, SamplingParams(), sat_ids=[9]).argmax(-1).tolist() == [4, 4, 4]
    assert greedy_drafts(logits, sat_ids=[9]) == [4, 4, 4]
    assert 9 not in topk_drafts(logits, 3, sat_ids=[9]).flatten().tolist()


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-5)
