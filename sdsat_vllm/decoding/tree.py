"""Step layouts (which tokens go into one target forward, and what each attends to), tree shapes,
and the tree attention mask.

Every forward of the engine, in every mode, is described by one `StepLayout`: a list of new tokens
and, for each, its *parent* among the new tokens (-1: the token attends to the cached context only).
A token attends to the whole KV cache, to its ancestors and to itself; its position is its parent's
position + 1. That one rule gives every layout of docs/design.md, section 1.3:

    head      the committed tokens not yet in the KV cache, a causal chain. Normally one token
              (x_t, the last committed); at prefill the whole prompt. Its last token is the *root*.
    nodes     draft tokens. A chain d_1..d_n (parent of d_1 = root, of d_i = d_{i-1}) or a top-k
              tree (parent = the node of the path prefix).
    blocks    SAT blocks of K tokens, each attached to an *anchor* (the root or a node): SAT j
              attends to the context, the anchor's ancestors, the anchor and SATs 1..j of its own
              block, and sits at position pos(anchor) + j, so it predicts the token at
              pos(anchor) + j + 1 exactly as in training (docs/design.md, section 1.2).

Chain tokens come first and SAT blocks last, so the KV entries of accepted chain drafts sit right
after the head: dropping the rest is a crop. `build_tree_attention_mask` is the one place the
custom mask is made for transformers (the tree-mask kernel of docs/design.md, section 5 takes its
compact form). Both come from `tree_step_tensors`, which builds the relation without a per-token
loop (pointer doubling), with the compact form that kernel takes (one int64 ancestor word per new
token), the positions and the KV entries to keep after verification.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch

ROOT = -1  # parent index meaning "the root" (in node lists) or "the cached context only" (in layouts)

TreeShape = tuple[tuple[int, ...], ...]  # Medusa-style paths: (0,), (1,), (0, 0) = top-0 then top-0, ...


@dataclass(slots=True)
class StepLayout:
    """The new tokens of one target forward and their tree structure.

    Glossary of index spaces: *layout index* = position in `input_ids` (0..q_len-1); *node index* =
    index into the drafts (0..num_nodes-1), layout index `num_head + node`; block b occupies layout
    indices `block_start(b) .. block_start(b) + num_sat - 1`.
    """

    # [q_len] token ids: head, then draft nodes, then SAT blocks
    input_ids: list[int]
    # [q_len] layout index of each token's parent; -1 for the first head token
    parents: list[int]
    num_head: int
    num_nodes: int
    num_sat: int
    # layout index of each block's anchor (the root is num_head - 1)
    block_anchors: list[int] = field(default_factory=list)

    @property
    def q_len(self) -> int:
        return len(self.input_ids)

    @property
    def root(self) -> int:
        """Layout index of the root: the last head token, whose logits give the next token."""
        return self.num_head - 1

    def node(self, i: int) -> int:
        """Layout index of draft node i."""
        return self.num_head + i

    def block_start(self, b: int) -> int:
        return self.num_head + self.num_nodes + b * self.num_sat

    @property
    def is_chain(self) -> bool:
        """True when the layout is a plain causal sequence (no custom mask needed)."""
        return all(p == i - 1 for i, p in enumerate(self.parents))


def make_layout(
    head_ids: Sequence[int],
    node_ids: Sequence[int] = (),
    node_parents: Sequence[int] = (),
    block_anchor_nodes: Sequence[int] = (),
    sat_ids: Sequence[int] = (),
) -> StepLayout:
    """Lay out one forward: head (causal), draft nodes, then one SAT block per anchor.

    node_parents[i] is the node index of node i's parent, or ROOT. block_anchor_nodes lists the
    anchors of the SAT blocks as node indices, ROOT for the root.
    """
    if not head_ids:
        raise ValueError("a step needs at least one head token (the last committed token)")
    if len(node_ids) != len(node_parents):
        raise ValueError("node_ids and node_parents must have the same length")
    h, n, k = len(head_ids), len(node_ids), len(sat_ids)
    if block_anchor_nodes and k == 0:
        raise ValueError("SAT blocks need sat_ids")

    def to_layout(node: int) -> int:
        if node == ROOT:
            return h - 1
        if not 0 <= node < n:
            raise ValueError(f"node index {node} out of range (0..{n - 1})")
        return h + node

    input_ids = list(head_ids) + list(node_ids)
    parents = list(range(-1, h - 1))
    for i, p in enumerate(node_parents):
        if p != ROOT and p >= i:
            raise ValueError("draft nodes must come after their parents (topological order)")
        parents.append(to_layout(p))
    anchors = []
    for a in block_anchor_nodes:
        anchor = to_layout(a)
        anchors.append(anchor)
        start = len(input_ids)
        input_ids.extend(sat_ids)
        parents.extend([anchor] + list(range(start, start + k - 1)))
    return StepLayout(input_ids, parents, num_head=h, num_nodes=n, num_sat=k, block_anchors=anchors)


def chain_layout(head_ids: Sequence[int], drafts: Sequence[int], sat_ids: Sequence[int] = (),
                 block_at: str = "none") -> StepLayout:
    """A chain of drafts with SAT blocks at: "none", "root" (no drafts: the two-step "step 1"),
    "last" (after the last draft: fused), or "all" (after the root and every draft: tree)."""
    n = len(drafts)
    parents = [ROOT] + list(range(n - 1)) if n else []
    anchors = {"none": [], "root": [ROOT], "last": [n - 1 if n else ROOT], "all": [ROOT] + list(range(n))}[block_at]
    return make_layout(head_ids, drafts, parents, anchors, sat_ids)


# ----------------------------------------------------------------------------------------------
# Positions and the attention mask


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every token: 0 for a token whose parent is -1, else parent's depth + 1."""
    depths: list[int] = []
    for i, p in enumerate(parents):
        if p >= i:
            raise ValueError(f"parents must point backwards (token {i} has parent {p})")
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def tree_position_ids(parents: Sequence[int], past_len: int, device=None) -> torch.Tensor:
    """Position ids of the new tokens: past_len + depth.  Returns [1, q_len] int64."""
    return (torch.tensor(tree_depths(parents), dtype=torch.long, device=device) + past_len)[None]


def tree_ancestor_mask(parents: Sequence[int], device=None) -> torch.Tensor:
    """[q_len, q_len] bool: entry (i, j) is True when new token i attends to new token j
    (j is i itself or one of its ancestors). Row i is the per-query ancestor bitmask of docs/design.md, section 5.

    The definition, one token at a time: the reference `tree_ancestor_matrix` (what every forward
    uses, no per-token loop) is tested against."""
    q = len(parents)
    mask = torch.zeros(q, q, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= i:
            raise ValueError(f"parents must point backwards (token {i} has parent {p})")
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask.to(device)


def build_tree_attention_mask(
    parents: "Sequence[int] | TreeStepTensors", past_len: int, dtype: torch.dtype, device=None
) -> torch.Tensor:
    """The attention mask of one tree-verify forward, in the form transformers takes with a cache.

    parents:  [q_len] parent of each new token (-1: attends to the cached context only), or the
              step's `TreeStepTensors` when the caller built them already (positions come from them too)
    past_len: number of tokens in the KV cache (all attended by every new token)
    Returns:  [1, 1, q_len, past_len + q_len] additive float mask of `dtype`: 0 where attended,
              finfo(dtype).min where not. (Additive float, not bool: transformers' sdpa path takes
              both, but its eager path adds the mask to the scores and silently misreads a bool.)

    This is the single function the tree-mask kernel replaces (docs/design.md, section 5).
    """
    steps = parents if isinstance(parents, TreeStepTensors) else tree_step_tensors(parents)
    q = steps.q_len
    # [q_len, q_len]
    among_new = steps.ancestors.to(device)
    # [q_len, past_len + q_len]
    allowed = torch.cat([torch.ones(q, past_len, dtype=torch.bool, device=device), among_new], dim=1)
    mask = torch.zeros(q, past_len + q, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


# ----------------------------------------------------------------------------------------------
# The compact tree mask (one int64 word per new token), positions and kept KV, in one place for the
# engine and the vLLM backend; the tree-attention kernel (sdsat_vllm.kernels.tree_attention) reads
# the words.

MAX_MASK_BITS = 64  # new tokens per request that one int64 ancestor word can describe


def tree_ancestor_matrix(parents: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """[q_len, q_len] bool on the CPU, equal to `tree_ancestor_mask`, built without a per-token loop.

    Pointer doubling: after round k, row i holds i and its ancestors at distance < 2^k, and jump[i]
    is its ancestor at distance exactly 2^k, so row i |= row jump[i] doubles the reach. Depths are
    < q_len, so ceil(log2(q_len)) rounds of [q_len, q_len] tensor ops suffice.
    """
    # [q_len]
    p = torch.as_tensor(parents, dtype=torch.long).cpu().reshape(-1)
    q = p.numel()
    idx = torch.arange(q)
    bad = (p >= idx) | (p < -1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"parents must point backwards (token {i} has parent {int(p[i])})")
    # Row q is a sentinel "no ancestor": all False, jumping to itself, so -1 needs no special case.
    # [q_len + 1, q_len]
    anc = torch.zeros(q + 1, q, dtype=torch.bool)
    anc[idx, idx] = True
    # [q_len + 1]
    jump = torch.cat([torch.where(p < 0, q, p), torch.tensor([q])])
    for _ in range(max(q - 1, 0).bit_length()):
        if bool((jump == q).all()):  # every token has run out of ancestors: shallow trees stop early
            break
        anc = anc | anc[jump]
        jump = jump[jump]
    return anc[:q]


def ancestor_mask_words(ancestors: torch.Tensor) -> torch.Tensor:
    """Pack an ancestor matrix into one int64 word per query: bit j set = may attend to new token j.

    ancestors: [q_len, q_len] bool, q_len <= 64
    Returns:   [q_len] int64 on the device of `ancestors` (bit 63 is the sign bit: word 63 of a
               64-token chain is negative, which the kernel reads with an arithmetic shift + & 1)
    """
    q = ancestors.shape[-1]
    if ancestors.dim() != 2 or ancestors.shape[0] != q:
        raise ValueError(f"ancestors must be [q_len, q_len], got {tuple(ancestors.shape)}")
    if q > MAX_MASK_BITS:
        raise ValueError(f"a tree step holds at most {MAX_MASK_BITS} new tokens per request (one int64 mask "
                         f"word per query); got {q}. Longer steps (a prefill) are chains: use causal attention")
    # [q_len] the value of bit j; 1 << 63 wraps to int64's minimum, which is exactly bit 63
    bits = torch.ones(q, dtype=torch.long, device=ancestors.device) << torch.arange(q, device=ancestors.device)
    # the bits of a row are distinct, so their sum is their OR and never overflows
    return (ancestors.long() * bits).sum(-1)


def mask_words_to_bool(words: torch.Tensor, q_len: int) -> torch.Tensor:
    """Unpack mask words: [q] int64 -> [q, q_len] bool, (i, j) = bit j of words[i]."""
    j = torch.arange(q_len, device=words.device)
    return ((words[:, None] >> j) & 1).bool()


@dataclass(frozen=True, slots=True)
class TreeStepTensors:
    """What one forward needs besides its token ids, built once per step from its `StepLayout`.

    kept_kv(last) names the KV entries to keep after verification, as layout indices: the head and
    the accepted path are exactly `last` and its ancestors, where `last` is the last accepted draft
    node's layout index (layout.root when none was accepted). For chain drafts that is a prefix
    (crop the cache); for a top-k tree the path is scattered (gather it).
    """

    # [q_len, q_len] bool: (i, j) True when new token i attends to new token j (itself or an ancestor)
    ancestors: torch.Tensor
    # [q_len] int64 depth of each token among the new tokens (0 for a token whose parent is -1)
    depths: torch.Tensor

    @property
    def q_len(self) -> int:
        return self.ancestors.shape[0]

    def mask_words(self, device=None) -> torch.Tensor:
        """[q_len] int64 per-query ancestor bitmask (bit j = attends to new token j); q_len <= 64."""
        return ancestor_mask_words(self.ancestors).to(device)

    def position_ids(self, past_len: int, device=None) -> torch.Tensor:
        """[q_len] int64: past_len + depth (the same as tree_position_ids, flat as vLLM takes them)."""
        return (self.depths + past_len).to(device)

    def kept_kv(self, last: int, device=None) -> torch.Tensor:
        """[num_keep] int64 layout indices, increasing: `last` and its ancestors."""
        if not 0 <= last < self.q_len:
            raise ValueError(f"last must be a layout index in 0..{self.q_len - 1}, got {last}")
        return self.ancestors[last].nonzero().reshape(-1).to(device)


def tree_step_tensors(layout: StepLayout | Sequence[int]) -> TreeStepTensors:
    """The one builder of mask, positions and kept KV for a step (a StepLayout or its parents list).

    Tensors live on the CPU (they are tiny); move them with the methods' `device` argument.
    """
    parents = layout.parents if isinstance(layout, StepLayout) else layout
    ancestors = tree_ancestor_matrix(parents)
    # the number of ancestors of a token (itself included) is its depth + 1
    return TreeStepTensors(ancestors=ancestors, depths=ancestors.sum(-1) - 1)


def layout_mask_words(layout: StepLayout | Sequence[int], device=None) -> torch.Tensor:
    """[q_len] int64 ancestor mask words of a step (q_len <= 64): the tree-attention kernel's mask."""
    return tree_step_tensors(layout).mask_words(device)


# ----------------------------------------------------------------------------------------------
# Top-k tree shapes (the reference's "nucleus" mode, Medusa-style)


def full_tree_shape(widths: Sequence[int]) -> TreeShape:
    """Every path through the top-widths[d] candidates at depth d+1: (2, 2) -> (0,) (1,) (0,0)
    (0,1) (1,0) (1,1). A width-1 tree is a chain."""
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"tree widths must be a non-empty list of positive ints, got {list(widths)}")
    paths = []
    for depth in range(1, len(widths) + 1):
        paths.extend(itertools.product(*[range(int(w)) for w in widths[:depth]]))
    return tuple(tuple(p) for p in paths)


def validate_tree_shape(shape: Sequence[Sequence[int]], num_sat: int) -> TreeShape:
    """Check a Medusa-style list of paths and return it sorted breadth-first.

    Each path (i_1, .., i_d) is a draft node: the i_1-th candidate of SAT 1, then the i_2-th of
    SAT 2, .. Every prefix of a path must itself be a path, and depth <= num_sat.
    """
    paths = sorted({tuple(int(i) for i in p) for p in shape}, key=lambda p: (len(p), p))
    if not paths:
        raise ValueError("the tree shape is empty: give at least one path, e.g. [[0]]")
    known = set(paths)
    for p in paths:
        if not p or any(i < 0 for i in p):
            raise ValueError(f"tree path {p} must be a non-empty tuple of non-negative top-k indices")
        if len(p) > num_sat:
            raise ValueError(f"tree path {p} is deeper than num_sat={num_sat}: the SAT block only drafts "
                             f"{num_sat} positions (use shorter paths or a larger num_sat)")
        if len(p) > 1 and p[:-1] not in known:
            raise ValueError(f"tree path {p} has no parent path {p[:-1]} in the shape")
    return tuple(paths)


def parse_tree_shape(text: str) -> TreeShape:
    """From the CLI: "3,2,1" (widths per depth, a full tree) or a JSON list of paths "[[0],[1],[0,0]]"."""
    text = text.strip()
    if text.startswith("["):
        import json

        return tuple(tuple(p) for p in json.loads(text))
    return full_tree_shape([int(w) for w in text.split(",") if w.strip()])


@dataclass(slots=True)
class DraftTree:
    """Draft nodes in topological (breadth-first) order."""

    # [num_nodes] token id of each node
    token_ids: list[int]
    # [num_nodes] node index of each node's parent, or ROOT
    parents: list[int]
    # [num_nodes] depth of each node (1 = a child of the root)
    depths: list[int]

    @property
    def num_nodes(self) -> int:
        return len(self.token_ids)


def draft_tree_from_topk(topk_ids: torch.Tensor, shape: TreeShape) -> DraftTree:
    """Build the draft tree of `shape` from the candidates of each SAT position.

    topk_ids: [num_sat, max_width] candidate token ids of SAT j, best first
    """
    index = {}
    tokens, parents, depths = [], [], []
    for path in shape:
        d = len(path)
        if path[-1] >= topk_ids.shape[1]:
            raise ValueError(f"tree path {path} asks for candidate {path[-1]} but only {topk_ids.shape[1]} exist")
        index[path] = len(tokens)
        tokens.append(int(topk_ids[d - 1, path[-1]]))
        parents.append(ROOT if d == 1 else index[path[:-1]])
        depths.append(d)
    return DraftTree(tokens, parents, depths)


def tree_max_width(shape: TreeShape) -> int:
    return 1 + max(p[-1] for p in shape)


def tree_depth(shape: TreeShape) -> int:
    return max(len(p) for p in shape)
