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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

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

    def fill(self, argmaxes: Sequence[int], tail: Sequence[int]) -> list[list[int]]:
        out: list[list[int]] = []
        for row, d in enumerate(self.drafts):
            if d is None:
                off, cnt = self.rows_for[row]
                d = [int(t) for t in argmaxes[off:off + cnt]] + list(tail)
            out.append(d)
        return out


def count_trailing_sats(tokens: Sequence[int], sat_set: frozenset[int] | set[int]) -> int:
    k = 0
    for t in reversed(tokens):
        if t not in sat_set:
            break
        k += 1
    return k


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
    verified_drafts[row]: the draft list that was verified in this step (input_batch.spec_token_ids).
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


class SDSATProposer:
    """vLLM `custom_class` proposer. Built by vLLM in each worker as ``SDSATProposer(vllm_config)``."""

    def __init__(self, vllm_config: Any):
        from ..config import SDSATConfig
        from . import patches

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
        vocab = model_config.get_vocab_size()
        bad = [i for i in self.sat_ids if i >= vocab]
        if bad:
            raise ValueError(f"sdsat.sat_token_ids {bad} are outside the model's vocabulary (size {vocab})")
        self.model = None
        self._last_hidden = None
        self._last_argmax = None
        logger.info("SDSAT proposer: n=%d real drafts + %d SAT tail per verify forward (K=%d, SAT ids %s)",
                    self.n, len(self.tail), self.K, sorted(set(self.sat_ids)))

    # vLLM: CPU runner calls this unconditionally, the GPU runner when present
    def load_model(self, target_model: Any) -> None:
        from . import patches

        self.model = target_model
        patches.install_sat_logit_mask(target_model, self.sat_ids, observe=self._observe_logits)

    def _observe_logits(self, hidden_states: Any, logits: Any) -> None:
        # Runs on every compute_logits call. The last call before propose is normally the verify
        # pass's (execute_model); the argmax is taken now, before the sampler changes the logits
        # in place. The hidden-states identity tells later whether this is that call.
        self._last_hidden = hidden_states
        self._last_argmax = logits.argmax(dim=-1)

    # vLLM's custom_class interface; used only if the runner hook is missing
    def propose(self, sampled_token_ids, num_tokens_no_spec=None, token_ids_cpu=None, slot_mappings=None, **_):
        return [list(self.tail) if s else [] for s in sampled_token_ids]

    # called by the runner_propose_context patch
    def sdsat_propose_with_context(self, input_batch: Any, sampled_token_ids: list[list[int]],
                                   sample_hidden_states: Any, spec_decode_metadata: Any) -> list[list[int]]:
        if self.model is None:
            raise RuntimeError(
                "SDSATProposer.load_model(target_model) was never called by vLLM's model runner, so SAT "
                "logits are not masked: this vLLM version changed how drafters are loaded (see "
                "sdsat_vllm/vllm_plugin/patches.py, patch 'sat_logit_mask')"
            )
        if spec_decode_metadata is not None:
            num_draft = list(spec_decode_metadata.num_draft_tokens)
            cu = spec_decode_metadata.cu_num_sampled_tokens.tolist()
        else:
            num_draft = cu = None
        plan = plan_drafts(sampled_token_ids, input_batch.spec_token_ids, num_draft, cu, self.sat_ids, self.n)
        if not plan.gather:
            return plan.fill([], self.tail)
        import torch

        if self._last_hidden is sample_hidden_states and self._last_argmax is not None:
            idx = torch.tensor(plan.gather, dtype=torch.long, device=self._last_argmax.device)
            top = self._last_argmax.index_select(0, idx).tolist()
        else:  # e.g. prompt-logprob calls came in between; same decision on every TP rank
            logger.debug("SDSAT proposer: the last compute_logits call was not the verify pass's; "
                         "recomputing the logits of %d SAT rows", len(plan.gather))
            idx = torch.tensor(plan.gather, dtype=torch.long, device=sample_hidden_states.device)
            logits = self.model.compute_logits(sample_hidden_states.index_select(0, idx))
            top = logits.argmax(dim=-1).tolist()
        self._last_hidden = self._last_argmax = None
        return plan.fill(top, self.tail)


__all__ = ["SDSATProposer", "plan_drafts", "DraftPlan", "count_trailing_sats", "PROPOSER_PATH"]
