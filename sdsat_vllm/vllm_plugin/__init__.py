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
(`policy.py` with `cost_model.py` and `lookup.py`; docs/design.md, section 4.5).

Importing this package is cheap (no torch, no vLLM): everything heavy is imported inside
:func:`register` and inside the proposer, which only vLLM's workers build.

Turned off (`VLLM_PLUGINS` without `sdsat`, or the package not installed), no SDSAT code runs in
vLLM's processes at all, so nothing of ours can explain a config that still says `"model": "sdsat"`:
vLLM takes it for a draft model's name and fails with "Invalid repository ID or local directory
specified: 'sdsat'" (after trying the Hugging Face Hub when it can reach it). :func:`plugin_problem`
and :func:`require_plugin` say what is wrong before an engine is built, where our own code builds
one (`sdsat demo`); README.md, "Serving in production", tells users of `vllm serve` what that error
means.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: What users write in `speculative_config["model"]`.
SHORT_NAME = "sdsat"
#: The custom_class proposer vLLM builds in its workers (`speculative_config.model` after resolution).
PROPOSER_PATH = "sdsat_vllm.vllm_plugin.proposer.SDSATProposer"
#: The plugin's name in the `vllm.general_plugins` entry-point group (setup.py): what VLLM_PLUGINS lists.
PLUGIN_NAME = "sdsat"

__all__ = ["PLUGIN_NAME", "PROPOSER_PATH", "SHORT_NAME", "plugin_problem", "register", "require_plugin",
           "shutdown_llm"]


def register() -> None:
    """Install the SDSAT patches of vLLM internals (idempotent; safe to call in every process).

    Patches of modules that are already imported are applied now; the others are applied the
    moment the process imports them, so an API-server process never imports the model runner
    just because the plugin was loaded. A patch whose check fails raises
    :class:`~sdsat_vllm.vllm_plugin.patches.PatchCheckError` (vLLM changed underneath us).
    """
    from . import patches

    patches.install_all()


def plugin_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why vLLM started with this environment (default: ours) will not load SDSAT; None if it will."""
    environ = os.environ if environ is None else environ
    allowed = environ.get("VLLM_PLUGINS")
    # vLLM's own reading of the variable (vllm/envs.py): split on commas, names compared as they are
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        return f"VLLM_PLUGINS={allowed!r} leaves out the {PLUGIN_NAME!r} plugin, so vLLM does not load it"
    from importlib.metadata import entry_points

    if not any(e.name == PLUGIN_NAME for e in entry_points(group="vllm.general_plugins")):
        return (f"no {PLUGIN_NAME!r} entry point in the vllm.general_plugins group: the sdsat-vllm package is "
                "not installed in this environment (pip install -e . in the checkout, see scripts/setup.sh)")
    return None


def require_plugin(speculative_config: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> None:
    """Refuse, before any engine is built, a speculative config that asks for SDSAT when vLLM will not
    load the plugin: vLLM's own error would be about a draft model named 'sdsat' it cannot find."""
    if not speculative_config or speculative_config.get("model") != SHORT_NAME:
        return
    problem = plugin_problem(environ)
    if problem:
        raise RuntimeError(
            f"speculative_config asks for model={SHORT_NAME!r}, but {problem}; vLLM would take "
            f"{SHORT_NAME!r} for the name of a draft model to download and fail with \"Invalid repository ID or "
            f"local directory specified: '{SHORT_NAME}'\". Put {PLUGIN_NAME} in VLLM_PLUGINS (comma-separated, "
            "no spaces) or unset it to use SDSAT; to serve without SDSAT, drop the speculative config as well"
        )


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
