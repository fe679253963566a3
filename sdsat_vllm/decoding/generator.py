"""SDSATGenerator: exact SDSAT decoding on any transformers causal LM carrying the `sdsat` block.

One loop per mode (docs/design.md, section 1.3), all built from the same four moves:

    layout   which tokens go into the forward (tree.py): head, drafts, SAT blocks
    forward  one target forward over the layout, with the KV cache (`_forward`)
    verify   accepted drafts + recovered/bonus token (verify.py), exact per docs/design.md, section 2
    commit   tokens go through the stop checker one by one (stopping.py); the KV of the head and
             the accepted drafts is kept, everything else (rejected drafts, SATs) is dropped
             (kv_cache.py) -- nothing is ever recomputed.

Modes:
    ar         plain decoding, one token per forward: the baseline.
    two_step   the paper's: [x_t, SAT×K] gives y and drafts; [y, d_1..d_K] verifies them.
    fused      [x_t, d_1..d_n, SAT×K]: on full acceptance the SAT tail gives the next drafts (one
               forward per step); otherwise the next forward is [y, SAT×K].
    tree       [x_t, d_1..d_n, B_0..B_n]: a SAT block after every draft position, so whatever is
               accepted, its block gives the next drafts. One forward per step, always.
    topk_tree  the reference's nucleus mode, exact: a Medusa-style tree of the top-k candidates of
               each SAT position, a SAT block after every node, per-node verification.

Batch size 1 (vLLM does batching).

Gated models (train_mode `gated`): the model's gate (training/gated.py) adds the LoRA delta on the
rows whose input id is a SAT id, so in every layout the head and the drafts are computed with the
base weights and only the SAT rows (whose K/V are always dropped) see base + delta: the output is the
base model's plain decoding.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache

from ..config import SDSATConfig, SDSATConfigError
from .kv_cache import keep_cache_entries
from .metrics import DecodeMetrics
from .sampling import SamplingParams, greedy_drafts, target_probs, topk_drafts
from .stopping import StopChecker
from .verify import Verdict, verify_chain, verify_tree
from .tree import (
    ROOT,
    DraftTree,
    StepLayout,
    TreeShape,
    build_tree_attention_mask,
    chain_layout,
    draft_tree_from_topk,
    make_layout,
    tree_depth,
    tree_max_width,
    tree_step_tensors,
    validate_tree_shape,
)

MODES = ("ar", "two_step", "fused", "tree", "topk_tree")
SPECULATIVE_MODES = MODES[1:]


def default_tree_shape(num_sat: int) -> TreeShape:
    """The top-1 chain plus the runner-up at every depth on it: 2K nodes, e.g. K=3:
    (0,) (1,) (0,0) (0,1) (0,0,0) (0,0,1)."""
    return validate_tree_shape([(0,) * (d - 1) + (i,) for d in range(1, num_sat + 1) for i in (0, 1)], num_sat)


@dataclass(slots=True)
class GenerationResult:
    text: str
    # [num_new_tokens] the generated token ids (EOS / the stop-string token included)
    token_ids: list[int]
    # [num_prompt_tokens]
    prompt_token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    metrics: DecodeMetrics


@dataclass(slots=True)
class _StepOutput:
    layout: StepLayout
    past_len: int  # cache length before the forward
    # [q_len - root, vocab_size] logits of layout indices root..q_len-1
    logits: torch.Tensor

    def chain_logits(self) -> torch.Tensor:
        """[1 + num_nodes, vocab_size]: the root, then every draft node."""
        return self.logits[: 1 + self.layout.num_nodes]

    def block_logits(self, b: int) -> torch.Tensor:
        """[num_sat, vocab_size]: the SAT positions of block b."""
        start = self.layout.block_start(b) - self.layout.root
        return self.logits[start : start + self.layout.num_sat]


@dataclass(slots=True)
class _Run:
    """The state of one generate call."""

    tokens: list[int]  # prompt + committed tokens
    cache: object  # transformers DynamicCache: KV of every token but the last
    stopper: StopChecker
    params: SamplingParams
    sat_ids: tuple[int, ...]  # the K SATs of one block
    generator: torch.Generator | None
    metrics: DecodeMetrics
    tree_shape: TreeShape | None = None

    @property
    def finished(self) -> bool:
        return self.stopper.finished

    @property
    def head(self) -> list[int]:
        """Committed tokens not yet in the KV cache (one, or the prompt at prefill)."""
        return self.tokens[self.cache.get_seq_length():]


class SDSATGenerator:
    """Exact SDSAT decoding with a transformers model.

    >>> gen = SDSATGenerator(model, tokenizer)
    >>> out = gen.generate("def add(a, b):", mode="tree", max_new_tokens=64)
    >>> out.text, out.token_ids, out.metrics.tokens_per_forward
    """

    def __init__(self, model, tokenizer, sdsat_config: SDSATConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        if sdsat_config is None and getattr(model.config, "sdsat", None):
            sdsat_config = SDSATConfig.from_hf_config(model.config)
        self.sdsat = sdsat_config  # None: a plain model, `ar` only
        if sdsat_config is not None and sdsat_config.train_mode == "gated":
            from ..training.gated import gate_of

            if gate_of(model) is None:
                # without its gate a gated model is the plain base: exact, but its SATs draft nonsense
                raise ValueError("this is a gated SDSAT model (train_mode 'gated') loaded without its gate: load it "
                                 "with SDSATGenerator.from_pretrained(DIR) or sdsat_vllm.training.gated.load_gated_dir "
                                 "/ load_gated_model")
        # every SAT id, masked out of every target distribution (computed once: used every step)
        self._all_sat_ids: tuple[int, ...] = tuple(sorted(sdsat_config.sat_id_set)) if sdsat_config else ()
        impl = getattr(model.config, "_attn_implementation", None)
        if impl not in ("sdpa", "eager"):
            # tree modes need a custom 4-D mask with a KV cache, which sdpa and eager take exactly
            warnings.warn(f"switching attention from {impl!r} to 'sdpa' (the SDSAT engine needs custom masks)")
            model.set_attn_implementation("sdpa")
        self.eos_token_ids = self._eos_ids()
        self.total_metrics: dict[str, DecodeMetrics] = {}

    @classmethod
    def from_pretrained(cls, model: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                        attn_implementation: str = "sdpa") -> "SDSATGenerator":
        """Load MODEL: a name known to `sdsat fetch` (shipped SDSAT models included), an HF model
        directory, or a .gguf file. A gated model directory gets its gate: the LoRA deltas of its
        adapter on SAT rows only, the base weights everywhere else."""
        from transformers import AutoTokenizer

        from ..adapters import resolve_model
        from ..training.gated import load_model_dir

        path = resolve_model(model)
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        m = load_model_dir(path, dtype=torch_dtype, attn_implementation=attn_implementation)
        tok = AutoTokenizer.from_pretrained(path)
        return cls(m.to(device), tok)

    # ------------------------------------------------------------------------------------------
    # Public API

    def generate(
        self,
        prompt: str | Sequence[int],
        mode: str = "fused",
        num_sat: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 128,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        tree_shape: Sequence[Sequence[int]] | None = None,
        ignore_eos: bool = False,
    ) -> GenerationResult:
        """Generate from `prompt` (text, or token ids) with one of MODES.

        num_sat: K, the SATs per block (default: the K the model was trained with; any 1..K works).
        temperature 0 is greedy; top_p/top_k as in transformers/vLLM. `seed` makes sampling
        reproducible. `stop`: strings that end generation (excluded from the text).
        tree_shape (topk_tree only): Medusa-style paths of top-k indices, e.g. [[0], [1], [0, 0]].
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        params = SamplingParams(float(temperature), float(top_p), int(top_k))
        sat_ids = self._sat_ids(mode, num_sat)
        prompt_ids = self._encode_prompt(prompt)
        shape = None
        if mode == "topk_tree":
            shape = validate_tree_shape(tree_shape, len(sat_ids)) if tree_shape else default_tree_shape(len(sat_ids))
        elif tree_shape:
            raise ValueError(f"tree_shape only applies to mode 'topk_tree', not {mode!r}")

        stops = [stop] if isinstance(stop, str) else list(stop or [])
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.model.device)
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        run = _Run(
            tokens=list(prompt_ids),
            cache=DynamicCache(config=self.model.config),
            stopper=StopChecker(self.tokenizer, self.eos_token_ids, max_new_tokens, stops, ignore_eos),
            params=params,
            sat_ids=sat_ids,
            generator=generator,
            metrics=DecodeMetrics(mode=mode, num_calls=1, num_prompt_tokens=len(prompt_ids)),
            tree_shape=shape,
        )
        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            getattr(self, f"_loop_{mode}")(run)
        self._sync()
        run.metrics.elapsed_s = time.perf_counter() - t0
        self.total_metrics[mode] = self.total_metrics.get(mode, DecodeMetrics(mode=mode)) + run.metrics
        return GenerationResult(
            text=run.stopper.text(),
            token_ids=list(run.stopper.generated),
            prompt_token_ids=list(prompt_ids),
            finish_reason=run.stopper.finish_reason,
            metrics=run.metrics,
        )

    # ------------------------------------------------------------------------------------------
    # One loop per mode

    def _loop_ar(self, run: _Run) -> None:
        while not run.finished:
            out = self._forward(run, chain_layout(run.head, []))
            self._verify_chain_and_commit(run, out, [])

    def _loop_two_step(self, run: _Run) -> None:
        while not run.finished:
            # step 1: [x_t, SAT×K] -> y from x_t (exact), drafts for the K tokens after y from the SATs
            out = self._forward(run, chain_layout(run.head, [], run.sat_ids, block_at="root"))
            self._verify_chain_and_commit(run, out, [])
            if run.finished:
                break
            drafts = greedy_drafts(out.block_logits(0), self._all_sat_ids)
            # step 2: [y, d_1..d_K] -> the accepted prefix plus a recovered or bonus token
            out = self._forward(run, chain_layout(run.head, drafts))
            self._verify_chain_and_commit(run, out, drafts)

    def _loop_fused(self, run: _Run) -> None:
        drafts: list[int] = []
        while not run.finished:
            # [x_t, d_1..d_n, SAT×K]; with no drafts this is the two-step "step 1" [x_t, SAT×K]
            out = self._forward(run, chain_layout(run.head, drafts, run.sat_ids, block_at="last"))
            verdict = self._verify_chain_and_commit(run, out, drafts)
            # the SAT tail conditioned on all n drafts: valid only if all were accepted
            all_accepted = verdict.num_accepted == len(drafts)
            drafts = greedy_drafts(out.block_logits(0), self._all_sat_ids) if all_accepted else []

    def _loop_tree(self, run: _Run) -> None:
        drafts: list[int] = []
        while not run.finished:
            # [x_t, d_1..d_n, B_0..B_n]: block B_j sees x_t, d_1..d_j
            out = self._forward(run, chain_layout(run.head, drafts, run.sat_ids, block_at="all"))
            verdict = self._verify_chain_and_commit(run, out, drafts)
            # B_m conditions on exactly what was committed: its SATs draft the tokens after the new x_t
            drafts = greedy_drafts(out.block_logits(verdict.num_accepted), self._all_sat_ids)

    def _loop_topk_tree(self, run: _Run) -> None:
        shape = run.tree_shape
        depth, width = tree_depth(shape), tree_max_width(shape)
        tree = DraftTree([], [], [])
        while not run.finished:
            anchors = [ROOT] + list(range(tree.num_nodes))
            layout = make_layout(run.head, tree.token_ids, tree.parents, anchors, run.sat_ids)
            out = self._forward(run, layout)
            probs = target_probs(out.chain_logits(), run.params, self._all_sat_ids)
            verdict = verify_tree(probs, tree.token_ids, tree.parents, run.params.greedy, run.generator)
            run.metrics.record_verify(tree.depths, verdict.num_accepted)
            self._commit(run, out, verdict)
            # block b is anchored at the root (b = 0) or at node b - 1
            block = 1 + verdict.accepted_nodes[-1] if verdict.accepted_nodes else 0
            candidates = topk_drafts(out.block_logits(block)[:depth], width, self._all_sat_ids)
            tree = draft_tree_from_topk(candidates, shape)

    # ------------------------------------------------------------------------------------------
    # Forward, verify, commit

    def _forward(self, run: _Run, layout: StepLayout) -> _StepOutput:
        device = self.model.device
        past_len = run.cache.get_seq_length()
        # [1, q_len]
        input_ids = torch.tensor([layout.input_ids], dtype=torch.long, device=device)
        if layout.is_chain:  # a plain causal chain (every step of ar and fused, a prefill): no custom mask
            # [1, q_len]
            position_ids = torch.arange(past_len, past_len + layout.q_len, device=device)[None]
            mask = None
        else:
            steps = tree_step_tensors(layout)  # mask and positions from one builder, no per-token loop
            # [1, q_len]
            position_ids = steps.position_ids(past_len, device=device)[None]
            # [1, 1, q_len, past_len + q_len]
            mask = build_tree_attention_mask(steps, past_len, self.model.dtype, device=device)
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         past_key_values=run.cache, use_cache=True, logits_to_keep=layout.q_len - layout.root)
        m = run.metrics
        m.num_forwards += 1
        m.num_input_tokens += layout.q_len
        m.num_sat_tokens += len(layout.block_anchors) * layout.num_sat
        if past_len and (layout.num_nodes or layout.block_anchors):
            m.num_drafts += 1  # vLLM's count: a decode forward carrying speculative tokens (drafts or SATs)
        return _StepOutput(layout, past_len, out.logits[0].float())

    def _verify_chain_and_commit(self, run: _Run, out: _StepOutput, drafts: list[int]) -> Verdict:
        probs = target_probs(out.chain_logits(), run.params, self._all_sat_ids)
        verdict = verify_chain(probs, drafts, run.params.greedy, run.generator)
        run.metrics.record_verify(range(1, len(drafts) + 1), verdict.num_accepted)
        self._commit(run, out, verdict)
        return verdict

    def _commit(self, run: _Run, out: _StepOutput, verdict: Verdict) -> None:
        taken = run.stopper.commit(verdict.output_tokens)
        run.tokens.extend(taken)
        run.metrics.num_new_tokens += len(taken)
        if run.finished:
            return
        # keep the KV of the head and of the accepted drafts; the last committed token is the next root
        layout = out.layout
        keep = list(range(layout.num_head)) + [layout.node(i) for i in verdict.accepted_nodes]
        keep_cache_entries(run.cache, out.past_len, keep)

    # ------------------------------------------------------------------------------------------
    # Input checks

    def _sat_ids(self, mode: str, num_sat: int | None) -> tuple[int, ...]:
        if self.sdsat is None:
            if mode != "ar":
                SDSATConfig.from_hf_config(self.model.config)  # raises the "no sdsat block" error
            return ()
        if num_sat is None:
            return self.sdsat.sat_token_ids
        if isinstance(num_sat, bool) or not isinstance(num_sat, int):
            raise ValueError(f"num_sat must be an int, got {num_sat!r}")
        try:
            return self.sdsat.sat_ids_for(num_sat)
        except SDSATConfigError as e:
            raise ValueError(str(e)) from None

    def _encode_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty: give at least one token of text to continue")
            for text in set(self.sdsat.sat_token_texts if self.sdsat else ()):
                if text and text in prompt:
                    raise ValueError(f"the prompt contains the SAT token text {text!r}: SATs are reserved for "
                                     "drafting; remove it from the prompt")
            ids = list(self.tokenizer(prompt).input_ids)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise ValueError("the prompt is empty: give at least one token to continue")
        vocab = self.model.get_input_embeddings().weight.shape[0]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the model's vocabulary (0..{vocab - 1})")
        sat_set = set(self._all_sat_ids)
        sats = sorted({i for i in ids if i in sat_set})
        if sats:
            raise ValueError(f"the prompt contains SAT token id(s) {sats}: SATs are reserved for drafting; "
                             "remove them from the prompt")
        return ids

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.tokenizer, "eos_token_id", None),
                    getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
                    getattr(self.model.config, "eos_token_id", None)):
            if src is None:
                continue
            ids.update([src] if isinstance(src, int) else src)
        return ids

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
