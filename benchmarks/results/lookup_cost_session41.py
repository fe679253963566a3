"""Record (results 41.1): what one lookup costs, the code of a git ref against the working tree, on the
same texts, with the same answers.

    python benchmarks/results/lookup_cost_session41.py [REF] [--out benchmarks/results/lookup_cost_session41_cpu.json]

REF (default 0de98af, the code before session 41) is exported with `git archive` into a temporary folder
and imported from there; the working tree's sdsat_vllm next. Texts: 1500 slices (60, 150 or 400 tokens,
int32 as vLLM's token rows) of the shipped default model's datastore, so that the datastore matches
(often long, with few occurrences) are like a request's own phrasing met again. Per call, in the order a
proposer meets them: the text's suffix match, the datastore match asked for the first time and again (its
memo), and the proposer's lookup_chains for a request in back-off (one token) and for a whole chain.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load(root: str):
    for name in [m for m in sys.modules if m == "sdsat_vllm" or m.startswith("sdsat_vllm.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        return tuple(importlib.import_module(f"sdsat_vllm.{m}")
                     for m in ("datastore", "vllm_plugin.policy", "vllm_plugin.proposer", "adapters"))
    finally:
        sys.path.pop(0)


def _key(x):
    if x is None:
        return None
    if isinstance(x, list):
        return [_key(o) for o in x]
    return (x.tokens, x.ngram, [round(v, 12) for v in (getattr(x, "share", None) or getattr(x, "q", None) or [])])


def measure(root: str) -> tuple[dict, dict]:
    import numpy as np

    D, P, R, A = _load(root)
    store = D.load_datastore(Path(A.resolve_model(A.DEFAULT_SDSAT_MODEL)) / D.MODEL_DIR_FILE)
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(1500):
        n = int(rng.choice([60, 150, 400]))
        start = int(rng.integers(0, len(store.tokens) - n - 10))
        t = store.tokens[start:start + n]
        texts.append(np.asarray(t[t >= 0], dtype=np.int32))
    sat = frozenset({49152, 49153})
    calls = (("suffix_match (the text)", lambda t: P.suffix_match(t, 5, stop=sat)),
             ("datastore.match, first ask", lambda t: store.match(t, 5, stop=sat)),
             ("datastore.match, asked again", lambda t: store.match(t, 5, stop=sat)),
             ("lookup_chains, back-off (1 token)", lambda t: R.lookup_chains(t, [], [], None, 0, 1, sat, store)),
             ("lookup_chains, a chain (5 tokens)", lambda t: R.lookup_chains(t, [], [], None, 0, 5, sat, store)))
    us, answers = {}, {}
    for name, fn in calls:
        t0 = time.perf_counter()
        out = [fn(t) for t in texts]
        us[name] = (time.perf_counter() - t0) / len(texts) * 1e6
        answers[name] = [_key(o) for o in out]
    return us, answers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref", nargs="?", default="0de98af")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdsat_ref_") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.ref, "sdsat_vllm"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        before, want = measure(tmp)
    after, got = measure(str(REPO))
    rows = [{"call": k, "us_ref": before[k], "us_tree": after[k], "same_answers": want[k] == got[k]} for k in before]
    print(f"{'call':36} {args.ref:>10} {'tree':>10}  same answers")
    for r in rows:
        print(f"{r['call']:36} {r['us_ref']:10.1f} {r['us_tree']:10.1f}  {r['same_answers']}")
    if args.out:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "ref": args.ref, "tree_head": head,
                                              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}, indent=1))
    return 0 if all(r["same_answers"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
