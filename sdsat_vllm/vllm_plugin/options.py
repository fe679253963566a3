"""SDSAT's options in vLLM: the names users may give, their defaults, and the one check of their values.

Users write them in the speculative config as ``sdsat_<name>`` (``{"model": "sdsat", "sdsat_policy":
"fixed"}``) or as ``additional_config={"sdsat": {...}}``; the patch ``speculative_config_sdsat_options``
(patches.py) moves them into ``additional_config[ADDITIONAL_CONFIG_KEY]``, which reaches the proposer
in every worker, after :func:`validate_options` has checked them, before any engine starts. What each
one does: docs/design.md, sections 4.5 (policy, cost, lookup, datastore, response_tokens), 4.6 (gate)
and 4.7 (mode).
"""

from __future__ import annotations

from .cost_model import CostModel

#: Options users may give (``speculative_config`` keys ``sdsat_<name>``, or
#: ``additional_config={"sdsat": {...}}``), with their defaults.
DEFAULT_OPTIONS = {
    "mode": "fused",          # "fused": [x, d, SAT tail]; "tree": a SAT block after x and every draft (tree_step.py)
    "policy": "adaptive",     # "adaptive": drafts and tail per request and step; "fixed": n drafts + n SAT tail
    "cost": "online",         # "online" (measured, device default as prior), "default", a number, or [[N, T], ...]
    "probe_budget": 0.03,     # share of a plain step a request in back-off may spend on probes
    "min_gain": 0.02,         # speculate only if the steady state (or, in back-off, the step) beats plain by this much
    # lookup-backed drafts, a suffix match in the request's text (adaptive policy only); None: on
    # with the adaptive policy, off otherwise (benchmarks/results 12.2: level or ahead of SAT-only
    # drafting in every set at batch 16 and 64, ahead on HumanEval and norepeat at batch 1)
    "lookup": None,
    # lookup drafts from a datastore of the model's own text too (sdsat_vllm/datastore.py; results 24):
    # "auto": the served model directory's sdsat_datastore/datastore.safetensors where it has one; "none"; or a
    # datastore file (`sdsat datastore`)
    "datastore": "auto",
    # and from the responses of the requests this engine finished, the newest this many tokens of them
    # (sdsat_vllm.datastore.ResponseDatastore; vLLM's suffix decoding caches responses the same way);
    # 0: off. Off by default for now: a benchmark that runs the same prompts twice in one engine would
    # draft the first answers back (bench_vllm.py's --sdsat-response-tokens; results 25)
    "response_tokens": 0,
    # a gated model's SATs get their adapter through "rows" (sat_row_lora.py: the delta on SAT rows, hooks in
    # vLLM's own layers; unsharded models) or "lora" (vLLM's LoRA layers); "auto": rows on a CPU at TP 1
    "gate": "auto",
}
POLICIES = ("fixed", "adaptive")
MODES = ("fused", "tree")
GATES = ("auto", "rows", "lora")  # a gated model's gate (sat_row_lora.gate_path)


def check_gate(option) -> None:
    """The one refusal of an unknown gate, for validate_options and sat_row_lora.gate_path alike."""
    if option not in GATES:
        raise ValueError(f"sdsat gate must be 'auto', 'rows' or 'lora', got {option!r}")


#: The key of vLLM's ``additional_config`` that carries the options to the proposer in every worker.
ADDITIONAL_CONFIG_KEY = "sdsat"


def validate_options(options: dict | None) -> dict:
    """The options with defaults filled in; ValueError naming the bad key or value."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown SDSAT option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)} "
                         f"(in speculative_config as sdsat_<name>, or additional_config={{'sdsat': {{...}}}})")
    out = {**DEFAULT_OPTIONS, **options}
    if out["mode"] not in MODES:
        raise ValueError(f"sdsat mode must be one of {list(MODES)}, got {out['mode']!r}")
    if out["mode"] == "tree":
        # a tree step always drafts from the block at the accepted position: n drafts, n + 1 blocks
        if options.get("policy", "fixed") != "fixed" or options.get("lookup") is True:
            raise ValueError("sdsat mode 'tree' drafts n tokens every step (policy 'fixed'); the adaptive policy "
                             "and lookup drafts work with mode 'fused'")
        out["policy"] = "fixed"
    if out["policy"] not in POLICIES:
        raise ValueError(f"sdsat policy must be one of {list(POLICIES)}, got {out['policy']!r}")
    if out["cost"] not in ("online", "default"):
        CostModel.from_option(out["cost"])  # raises with the reason
    if out["lookup"] is None:
        out["lookup"] = out["policy"] == "adaptive"
    if not isinstance(out["lookup"], bool):
        raise ValueError(f"sdsat lookup must be true or false, got {out['lookup']!r}")
    if out["lookup"] and out["policy"] != "adaptive":
        raise ValueError("sdsat lookup needs policy 'adaptive' (it chooses between the SAT and the lookup chain "
                         "by their expected accepted length)")
    store = out["datastore"]
    if not isinstance(store, str) or not store:
        raise ValueError(f"sdsat datastore must be 'auto', 'none' or the path of a datastore file, got {store!r}")
    if store not in ("auto", "none"):
        if not out["lookup"]:
            raise ValueError("sdsat datastore needs lookup drafts (lookup true, policy 'adaptive'): its chains "
                             "are lookup candidates")
        from ..datastore import read_metadata

        read_metadata(store)  # raises DatastoreError (a ValueError) naming the file and what is wrong
    kept = out["response_tokens"]
    if isinstance(kept, bool) or not isinstance(kept, int) or kept < 0:
        raise ValueError(f"sdsat response_tokens must be a whole number of tokens >= 0 (0: off), got {kept!r}")
    if kept and not out["lookup"]:
        raise ValueError("sdsat response_tokens needs lookup drafts (lookup true, policy 'adaptive'): the responses' "
                         "chains are lookup candidates")
    check_gate(out["gate"])
    for key in ("probe_budget", "min_gain"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"sdsat {key} must be a number in [0, 1), got {v!r}")
    return out


__all__ = ["DEFAULT_OPTIONS", "POLICIES", "MODES", "GATES", "check_gate", "ADDITIONAL_CONFIG_KEY", "validate_options"]
