"""SDSAT inside vLLM: the `vllm.general_plugins` entry point.

vLLM calls :func:`register` in every process it starts (API server, engine core, every worker,
the model-inspection subprocess). After it ran, serving an SDSAT model needs one flag::

    vllm serve ./sdsat-model --spec-model sdsat [--spec-tokens 5]
    vllm serve ./sdsat-model --speculative-model sdsat [--num-speculative-tokens 5]   # same
    vllm serve ./sdsat-model --speculative-config '{"model": "sdsat", "num_speculative_tokens": 5}'
    LLM(model="./sdsat-model", speculative_config={"model": "sdsat", "num_speculative_tokens": 5})
    LLM(..., speculative_config={"model": "sdsat", "num_speculative_tokens": 5, "sdsat_policy": "adaptive"})

The SAT ids come from the model's config.json `sdsat` block. `num_speculative_tokens` is the
number of real drafts n per step (1..K, K = the number of SATs the model was trained with; it
defaults to K when left out). Internally each verify forward carries the n drafts followed by n
SATs (the `fused` mode; docs/design.md, section 4 describes the integration); with
`sdsat_policy="adaptive"` the drafts and the tail are chosen per request and step instead
(`policy.py`, docs/design.md, section 4.5).

Importing this package is cheap (no torch, no vLLM): everything heavy is imported inside
:func:`register` and inside the proposer, which only vLLM's workers build.
"""

from __future__ import annotations

#: What users write in `speculative_config["model"]`.
SHORT_NAME = "sdsat"
#: The custom_class proposer vLLM builds in its workers (`speculative_config.model` after resolution).
PROPOSER_PATH = "sdsat_vllm.vllm_plugin.proposer.SDSATProposer"

__all__ = ["SHORT_NAME", "PROPOSER_PATH", "register", "shutdown_llm"]


def register() -> None:
    """Install the SDSAT patches of vLLM internals (idempotent; safe to call in every process).

    Patches of modules that are already imported are applied now; the others are applied the
    moment the process imports them, so an API-server process never imports the model runner
    just because the plugin was loaded. A patch whose check fails raises
    :class:`~sdsat_vllm.vllm_plugin.patches.PatchCheckError` (vLLM changed underneath us).
    """
    from . import patches

    patches.install_all()


def shutdown_llm(llm) -> None:
    """Stop an `LLM`'s engine-core processes now rather than whenever it is garbage-collected:
    the demo, the benchmarks and the tests start several engines in one process, and on a small
    machine a lingering engine's workers slow the next one down."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        try:
            engine_core.shutdown()
        except Exception:  # already stopped, or died: nothing left to stop
            pass
