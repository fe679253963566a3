"""Helpers for the decoding-engine tests: tiny SDSAT models, a chi-square test, a toy target LM, and
the reference code's biased nucleus verifier (kept here only as the negative control)."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Callable, Sequence

import torch

from tiny_models import make_tiny_model


@functools.lru_cache(maxsize=None)
def tiny_sdsat(arch: str = "llama", num_sat: int = 8, seed: int = 0):
    """A tiny random model with K SATs (one id repeated), fp32, sdpa attention. Cached: do not mutate."""
    from sdsat_vllm.training.sat_setup import add_sat_tokens

    model, tok = make_tiny_model(arch, seed=seed)
    cfg = add_sat_tokens(model, tok, num_sat=num_sat)
    return model.eval(), tok, cfg


@functools.lru_cache(maxsize=None)
def tiny_vocab_sdsat(vocab_size: int = 8, num_sat: int = 2, seed: int = 1, sharpen: float = 6.0):
    """A tiny random Llama whose vocabulary is `vocab_size` ids, the last one the SAT, with sharpened
    output logits (so drafts get accepted and the distribution is far from uniform)."""
    from sdsat_vllm.config import SDSATConfig

    model, tok = make_tiny_model("llama", vocab_size=vocab_size, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.eval(), tok, SDSATConfig(sat_token_ids=(vocab_size - 1,) * num_sat)


def chi_square_pvalue(counts: dict, probs: dict, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit of observed `counts` to exact `probs` (outcome -> prob),
    pooling outcomes whose expected count is below min_expected. An outcome with probability 0 that
    was observed gives p = 0."""
    n = sum(counts.values())
    if any(probs.get(k, 0.0) <= 0.0 for k in counts):
        return 0.0
    big, pooled_obs, pooled_exp = [], 0, 0.0
    for k, p in probs.items():
        e = n * p
        if e >= min_expected:
            big.append((counts.get(k, 0), e))
        else:
            pooled_obs += counts.get(k, 0)
            pooled_exp += e
    if pooled_exp > 0:
        big.append((pooled_obs, pooled_exp))
    stat = sum((o - e) ** 2 / e for o, e in big)
    df = max(len(big) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


class ToyLM:
    """A target LM over a tiny vocabulary whose next-token distribution is a fixed random function of
    the prefix: exact joint probabilities are a product, no model forward needed."""

    def __init__(self, vocab_size: int = 4, sharpness: float = 1.5, seed: int = 0):
        self.vocab_size, self.sharpness, self.seed = vocab_size, sharpness, seed
        self._cache: dict[tuple, torch.Tensor] = {}

    def probs(self, prefix: Sequence[int]) -> torch.Tensor:
        key = tuple(prefix)
        if key not in self._cache:
            g = torch.Generator().manual_seed(hash((self.seed,) + key) % (2**31))
            self._cache[key] = (torch.randn(self.vocab_size, generator=g) * self.sharpness).softmax(-1)
        return self._cache[key]

    def joint(self, length: int) -> dict[tuple, float]:
        """Exact probability of every sequence of `length` tokens under plain sampling."""
        out = {(): 1.0}
        for _ in range(length):
            nxt = {}
            for seq, p in out.items():
                probs = self.probs(seq)
                for t in range(self.vocab_size):
                    nxt[seq + (t,)] = p * float(probs[t])
            out = nxt
        return out


def sample_sequences(step: Callable[[list[int], torch.Generator], list[int]], length: int, num_samples: int,
                     seed: int = 0) -> Counter:
    """Run `step(prefix, generator) -> output tokens` until `length` tokens, num_samples times."""
    g = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    for _ in range(num_samples):
        seq: list[int] = []
        while len(seq) < length:
            seq.extend(step(seq, g))
        counts[tuple(seq[:length])] += 1
    return counts


def biased_nucleus_verify(probs: torch.Tensor, token_ids: Sequence[int], parents: Sequence[int],
                          generator: torch.Generator) -> list[int]:
    """The reference code's nucleus verifier, reconstructed: for every root-to-leaf path draw an
    independent target sample at each node of the path, keep the path with the longest matching
    prefix, emit its matched drafts plus the sample at its first mismatch (or the bonus).
    Biased towards the drafts: the maximum over independent tries accepts too often.
    DO NOT USE outside the negative-control tests.

    probs: [num_nodes + 1, vocab_size] as for verify.verify_tree
    """
    if not token_ids:  # no drafts: one plain sample at the root
        return [int(torch.multinomial(probs[0], 1, generator=generator))]
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    leaves = [i for i in range(len(token_ids)) if i not in children]
    paths = []
    for leaf in leaves:
        path, node = [], leaf
        while node != -1:
            path.append(node)
            node = parents[node]
        paths.append(path[::-1])
    best = None
    for path in paths:
        out, node = [], -1
        for child in path + [None]:
            y = int(torch.multinomial(probs[node + 1], 1, generator=generator))
            if child is not None and y == token_ids[child]:
                out.append(y)
                node = child
                continue
            out.append(y)
            break
        if best is None or len(out) > len(best):
            best = out
    return best
