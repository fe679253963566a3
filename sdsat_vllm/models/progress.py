"""Progress on stderr: one-line log messages and tqdm bars (tqdm is imported only when a bar is made)."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"[sdsat fetch] {msg}", file=sys.stderr, flush=True)


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "B"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )
