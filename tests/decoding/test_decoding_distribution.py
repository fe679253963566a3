"""Sampling through the whole engine is lossless: on a model with an 8-token vocabulary, the first
three committed tokens of every mode follow the exact plain-sampling distribution (enumerated with
forwards over every prefix), by a chi-square test. Negative control: the engine with its tree
verifier swapped for the reference's biased nucleus verifier fails the same test with the same
number of samples. The slow variant takes 8x more samples. A gated model (LoRA deltas on SAT rows
only) samples exactly as its base model without the adapter."""

import copy
import functools

import pytest
import torch

from decoding_helpers import biased_nucleus_verify, chi_square_pvalue, tiny_vocab_sdsat
from sdsat_vllm.decoding import generator as generator_module
from sdsat_vllm.decoding.generator import SPECULATIVE_MODES, SDSATGenerator
from sdsat_vllm.decoding.sampling import SamplingParams, target_probs
from sdsat_vllm.decoding.verify import Verdict

PROMPT = [1, 2, 3]
LENGTH = 3
P_MIN = 1e-3  # fixed seeds, so the outcome is deterministic; the biased verifier lands below 1e-20
NUM_SAMPLES = 500


@torch.no_grad()
def exact_joint(model, params: SamplingParams, sat_ids, length=LENGTH) -> dict:
    """Probability of every `length`-token continuation of PROMPT under plain sampling."""
    seqs = {(): 1.0}
    for _ in range(length):
        prefixes = list(seqs)
        logits = model(input_ids=torch.tensor([PROMPT + list(p) for p in prefixes])).logits[:, -1]
        probs = target_probs(logits, params, sat_ids)
        seqs = {p + (t,): seqs[p] * float(probs[i, t]) for i, p in enumerate(prefixes)
                for t in range(probs.shape[1]) if probs[i, t] > 0}
    return seqs


def engine_counts(gen, mode, params, num_samples, seed=0):
    counts = {}
    for s in range(num_samples):
        out = gen.generate(PROMPT, mode=mode, temperature=params.temperature, top_p=params.top_p,
                           top_k=params.top_k, max_new_tokens=LENGTH, seed=seed * 1_000_003 + s, ignore_eos=True)
        key = tuple(out.token_ids)
        counts[key] = counts.get(key, 0) + 1
    return counts


@functools.lru_cache(maxsize=None)
def tiny_vocab_gated(r: int = 4, seed: int = 0):
    """(base, gated model, tokenizer, config): tiny_vocab_sdsat's model as the base, and a copy with
    gated LoRA whose deltas are random and large, so the SAT rows are far from the base's."""
    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.training.gated import GatedLoRALinear, install_gated_lora

    base, tok, cfg = tiny_vocab_sdsat()
    model = copy.deepcopy(base)
    install_gated_lora(model, cfg.sat_token_ids, r, 2 * r)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GatedLoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.5)
    return base, model.eval(), tok, SDSATConfig(cfg.sat_token_ids, train_mode="gated")


def _check(mode, params, num_samples, gated=False):
    if gated:
        base, model, tok, cfg = tiny_vocab_gated()
    else:
        model, tok, cfg = tiny_vocab_sdsat()
        base = model
    gen = SDSATGenerator(model, tok, cfg)
    counts = engine_counts(gen, mode, params, num_samples)
    p = chi_square_pvalue(counts, exact_joint(base, params, cfg.sat_token_ids))  # the base without any adapter
    return p, gen.total_metrics[mode]


@pytest.mark.parametrize("mode", SPECULATIVE_MODES)
def test_sampling_first_tokens_match_plain_sampling(mode):
    p, metrics = _check(mode, SamplingParams(temperature=1.0), num_samples=NUM_SAMPLES)
    assert metrics.num_accepted_tokens > 0 and metrics.num_accepted_tokens < metrics.num_draft_tokens
    assert p > P_MIN, f"{mode}: chi-square p = {p:.2e}"


@pytest.mark.parametrize("mode", SPECULATIVE_MODES)
def test_gated_model_samples_as_its_base_model(mode):
    p, metrics = _check(mode, SamplingParams(temperature=1.0), num_samples=NUM_SAMPLES, gated=True)
    assert metrics.num_accepted_tokens > 0 and metrics.num_accepted_tokens < metrics.num_draft_tokens
    assert p > P_MIN, f"{mode}: chi-square p = {p:.2e}"


def test_gated_lora_changes_the_sat_rows_only():
    """The distribution test above means something: the delta moves the SAT rows' logits, not the others."""
    base, model, _, cfg = tiny_vocab_gated()
    ids = torch.tensor([PROMPT + list(cfg.sat_token_ids)])
    with torch.no_grad():
        a, b = base(input_ids=ids).logits, model(input_ids=ids).logits
    n = len(PROMPT)
    assert torch.equal(a[:, :n], b[:, :n]) and (a[:, n:] - b[:, n:]).abs().max() > 0.5


def test_sampling_with_top_k_top_p_matches_plain_sampling():
    p, _ = _check("tree", SamplingParams(temperature=0.8, top_p=0.9, top_k=4), num_samples=NUM_SAMPLES)
    assert p > P_MIN, f"chi-square p = {p:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("mode", SPECULATIVE_MODES)
def test_sampling_first_tokens_match_plain_sampling_many_samples(mode, gated):
    p, _ = _check(mode, SamplingParams(temperature=1.0), num_samples=4000, gated=gated)
    assert p > P_MIN, f"{mode}: chi-square p = {p:.2e}"


def _biased_verify_tree(probs, token_ids, parents, greedy, generator=None):
    """The reference's nucleus verifier in the engine's Verdict form (negative control only)."""
    out = biased_nucleus_verify(probs, token_ids, parents, generator)
    nodes, node = [], -1
    for tok in out[:-1]:
        node = next(i for i, (t, p) in enumerate(zip(token_ids, parents)) if p == node and t == tok)
        nodes.append(node)
    return Verdict(nodes, out[:-1], out[-1], is_bonus=node not in parents)


def test_negative_control_engine_with_biased_verifier_fails(monkeypatch):
    """Same model, same number of samples as the test above: the biased verifier is rejected."""
    monkeypatch.setattr(generator_module, "verify_tree", _biased_verify_tree)
    p, _ = _check("topk_tree", SamplingParams(temperature=1.0), num_samples=NUM_SAMPLES)
    assert p < P_MIN, f"the biased verifier passed the distribution test (p = {p:.2e})"
