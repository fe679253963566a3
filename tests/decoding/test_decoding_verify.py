"""Verification: hand-built greedy cases, then the sampling distribution against exact probabilities
(with the reference's biased nucleus verifier as the negative control)."""

import pytest
import torch

from decoding_helpers import ToyLM, biased_nucleus_verify, chi_square_pvalue, sample_sequences
from sdsat_vllm.decoding.verify import verify_chain, verify_tree

V = 6


def onehot_rows(targets):
    """[len(targets), V] scores whose argmax is each target."""
    return torch.nn.functional.one_hot(torch.tensor(targets), V).float()


# ---------------------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize(
    "drafts, targets, accepted, next_token, is_bonus",
    [
        ([1, 2, 3], [1, 2, 3, 4], [1, 2, 3], 4, True),  # perfect match + bonus
        ([1, 2, 3], [1, 5, 3, 4], [1], 5, False),  # mismatch at the 2nd draft: recovered = target
        ([1, 2, 3], [0, 2, 3, 4], [], 0, False),  # first draft rejected
        ([], [4], [], 4, True),  # no drafts: plain decoding of one token
    ],
)
def test_verify_chain_greedy(drafts, targets, accepted, next_token, is_bonus):
    v = verify_chain(onehot_rows(targets), drafts, greedy=True)
    assert v.accepted_tokens == accepted and v.accepted_nodes == list(range(len(accepted)))
    assert v.next_token == next_token and v.is_bonus == is_bonus
    assert v.output_tokens == accepted + [next_token]


def test_verify_tree_greedy_follows_the_target_path():
    # root -> {1 (node0), 2 (node1)}; node0 -> {3 (node2)}; node1 -> {3 (node3), 4 (node4)}
    tokens, parents = [1, 2, 3, 3, 4], [-1, -1, 0, 1, 1]
    # target argmax at root, node0..node4: root says 2, node1 says 4, node4 (leaf) says 5 (bonus)
    v = verify_tree(onehot_rows([2, 0, 4, 0, 0, 5]), tokens, parents, greedy=True)
    assert v.accepted_nodes == [1, 4] and v.accepted_tokens == [2, 4] and v.next_token == 5 and v.is_bonus
    # root says 1, node0 says 0: not its child 3 -> recovered 0 after one accepted draft
    v = verify_tree(onehot_rows([1, 0, 0, 0, 0, 0]), tokens, parents, greedy=True)
    assert v.accepted_tokens == [1] and v.next_token == 0 and not v.is_bonus


def test_verify_tree_rejects_duplicate_siblings():
    with pytest.raises(ValueError, match="two children"):
        verify_tree(onehot_rows([0, 0, 0]), [1, 1], [-1, -1], greedy=True)


def test_verify_chain_sampling_edge_probabilities():
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(2, V)
    p[0, 3] = 1.0  # the draft 3 has probability 1: always accepted
    p[1, 5] = 1.0
    for _ in range(20):
        v = verify_chain(p, [3], greedy=False, generator=g)
        assert v.output_tokens == [3, 5] and v.is_bonus
    p = torch.full((2, V), 1.0 / (V - 1))
    p[0, 2] = 0.0  # the draft 2 has probability 0: never accepted, never emitted
    for _ in range(50):
        v = verify_chain(p, [2], greedy=False, generator=g)
        assert v.num_accepted == 0 and v.next_token != 2


# ---------------------------------------------------------------------------------------------- sampling

LENGTH = 3  # tokens per sampled sequence: 4^3 = 64 outcomes
NUM_SAMPLES = 6000
P_MIN = 1e-3  # fixed seeds: the test is deterministic; exact verifiers sit far above, the biased one far below


def chain_step(lm: ToyLM, n: int, verifier="exact"):
    """One speculative step: greedy drafts from the target itself (high acceptance), then verify."""

    def step(prefix, g):
        drafts, ctx = [], list(prefix)
        for _ in range(n):
            drafts.append(int(lm.probs(ctx).argmax()))
            ctx.append(drafts[-1])
        probs = torch.stack([lm.probs(list(prefix) + drafts[:i]) for i in range(n + 1)])
        return verify_chain(probs, drafts, greedy=False, generator=g).output_tokens

    return step


def tree_step(lm: ToyLM, verifier: str):
    """A 2-wide, 2-deep tree: the top-2 tokens at the root, each followed by its own top-1."""

    def step(prefix, g):
        prefix = list(prefix)
        top2 = lm.probs(prefix).topk(2).indices.tolist()
        tokens = top2 + [int(lm.probs(prefix + [t]).argmax()) for t in top2]
        parents = [-1, -1, 0, 1]
        ctx = [prefix, prefix + [tokens[0]], prefix + [tokens[1]], prefix + [tokens[0], tokens[2]],
               prefix + [tokens[1], tokens[3]]]
        probs = torch.stack([lm.probs(c) for c in ctx])
        if verifier == "biased":
            return biased_nucleus_verify(probs, tokens, parents, g)
        return verify_tree(probs, tokens, parents, greedy=False, generator=g).output_tokens

    return step


@pytest.mark.parametrize("num_drafts", [1, 3])
def test_chain_speculative_sampling_is_exact(num_drafts):
    lm = ToyLM(vocab_size=4, seed=1)
    counts = sample_sequences(chain_step(lm, num_drafts), LENGTH, NUM_SAMPLES, seed=11)
    assert chi_square_pvalue(counts, lm.joint(LENGTH)) > P_MIN


def test_tree_per_node_sampling_is_exact():
    lm = ToyLM(vocab_size=4, seed=2)
    counts = sample_sequences(tree_step(lm, "exact"), LENGTH, NUM_SAMPLES, seed=12)
    assert chi_square_pvalue(counts, lm.joint(LENGTH)) > P_MIN


def test_negative_control_biased_nucleus_verifier_fails_the_same_test():
    """The reference's nucleus verifier over the same tree, the same number of samples: rejected."""
    lm = ToyLM(vocab_size=4, seed=2)
    counts = sample_sequences(tree_step(lm, "biased"), LENGTH, NUM_SAMPLES, seed=12)
    assert chi_square_pvalue(counts, lm.joint(LENGTH)) < P_MIN
