"""Verification of drafts against the target distributions: chains and trees, greedy and sampling.

Glossary (vLLM's rejection-sampler words):
    accepted tokens   drafts that verification keeps, a prefix of the chain (a root-to-node path
                      of the tree).
    recovered token   the token emitted where a draft is rejected: sampled from the residual
                      distribution (greedy: the target argmax).
    bonus token       the token emitted after the last draft when every draft is accepted, sampled
                      from the target distribution at that draft (free: its logits are already there).
    output tokens     accepted + (recovered or bonus): always at least one token per step.

Exactness (docs/design.md, section 2). Drafts here are deterministic (the argmax / top-k of SAT positions), so
the draft distribution q is one-hot:
  * chain: standard speculative sampling with one-hot q. Accept d with probability
    min(1, p(d)/q(d)) = p(d); on rejection sample from norm(max(0, p - q)), which is p with d removed,
    renormalised. The output token then has distribution p(d)·[d] + (1-p(d))·p(·|≠d) = p.
  * tree: per-node sampling. At a node, sample y ~ p (the target distribution at that node); if a
    child of the node carries y, accept it and go on from the child, else emit y and stop. Every
    emitted token is a sample of p at its position, whatever the tree, so the output is exact.
The reference code's nucleus verifier (an independent target sample per path, keeping the longest
match) is biased towards the drafts; it is deliberately not here (tests/decoding keep it as the
negative control of the distribution test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .sampling import sample_from


@dataclass(slots=True)
class Verdict:
    """The outcome of verifying one step's drafts."""

    # node indices of the accepted drafts, root side first (for a chain: 0..num_accepted-1)
    accepted_nodes: list[int]
    # token ids of the accepted drafts
    accepted_tokens: list[int]
    # the recovered token (a draft was rejected) or the bonus token (none was)
    next_token: int
    is_bonus: bool

    @property
    def num_accepted(self) -> int:
        return len(self.accepted_nodes)

    @property
    def output_tokens(self) -> list[int]:
        return self.accepted_tokens + [self.next_token]


def verify_chain(
    probs: torch.Tensor,
    drafts: Sequence[int],
    greedy: bool,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Verify a chain of drafts d_1..d_n.

    probs:  [n + 1, vocab_size] target distribution at the root and after each draft: row i is the
            distribution of the token d_{i+1} stands for; row n gives the bonus token.
    drafts: [n] draft token ids
    greedy: accept while the draft is the target argmax (probs may then be one-hot or any scores)
    """
    n = len(drafts)
    assert probs.shape[0] == n + 1, f"need n+1={n + 1} target rows, got {probs.shape[0]}"
    if greedy:
        targets = probs.argmax(dim=-1).tolist()
        m = 0
        while m < n and drafts[m] == targets[m]:
            m += 1
        return Verdict(list(range(m)), list(drafts[:m]), targets[m], is_bonus=m == n)
    for i, d in enumerate(drafts):
        p = probs[i]
        # accept with probability p(d) (one-hot q)
        if float(torch.rand((), generator=generator, device=p.device)) < float(p[d]):
            continue
        # rejected: recovered token from norm(max(0, p - q)) = p without d, renormalised
        residual = p.clone()
        residual[d] = 0.0
        return Verdict(list(range(i)), list(drafts[:i]), sample_from(residual / residual.sum(), generator), False)
    return Verdict(list(range(n)), list(drafts), sample_from(probs[n], generator), is_bonus=True)


def verify_tree(
    probs: torch.Tensor,
    token_ids: Sequence[int],
    parents: Sequence[int],
    greedy: bool,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Per-node verification of a draft tree.

    probs:     [num_nodes + 1, vocab_size] target distribution at the root (row 0) and at every
               node (row 1 + i for node i)
    token_ids: [num_nodes] draft token of each node; siblings must carry distinct tokens
    parents:   [num_nodes] node index of each node's parent, or -1 for a child of the root
    """
    assert probs.shape[0] == len(token_ids) + 1
    children: dict[int, dict[int, int]] = {}
    for i, (tok, par) in enumerate(zip(token_ids, parents)):
        siblings = children.setdefault(par, {})
        if tok in siblings:
            raise ValueError(f"draft tree has two children with token {tok} under node {par}")
        siblings[tok] = i
    accepted: list[int] = []
    node = -1
    while True:
        p = probs[node + 1]
        y = int(p.argmax()) if greedy else sample_from(p, generator)
        child = children.get(node, {}).get(y)
        if child is None:
            is_bonus = node not in children
            return Verdict(accepted, [token_ids[i] for i in accepted], y, is_bonus)
        accepted.append(child)
        node = child
