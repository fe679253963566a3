"""Session 40 (results 40.3), offline: would another rule for reading the datastore draft better than its longest match?

`Datastore.match` continues the longest suffix of the text (1..8 tokens) that occurs in the model's own text, with the
majority token of its occurrences at each position. On a datastore of ~444k tokens a long match often has a single
occurrence, so a shorter suffix with many occurrences might predict better (the back-off of n-gram models). For every
position of replay-cached greedy completions (`simulate_policy.py --data`: prompt + the model's output), this scores
the first 5 tokens of each rule's chain against what the model really wrote next (tokens accepted, greedy):

  text          the request's own text (policy.suffix_match, what lookup drafts from)
  ds_longest    Datastore.match (what the proposer sends)
  ds_capN       the majority continuation of the suffix of min(longest, N) tokens
  ds_occK       ... of the longest suffix with at least K occurrences
  ds_secondK    the longest match's K-th most frequent next token, then its majority continuation
  oracle(...)   the best of those rules at each position, in hindsight

Usage: python datastore_backoff_session40.py DATA.json [MODEL_DIR]   (a record of what ran, not a tool: it calls the
datastore's private `_continue`)
"""

import collections
import json
import sys

import numpy as np

from sdsat_vllm.datastore import MAX_NGRAM, MIN_NGRAM, SEPARATOR, load_datastore
from sdsat_vllm.vllm_plugin.policy import suffix_match

CAP = 5  # tokens of a chain scored (the default adapter's K)
model = sys.argv[2] if len(sys.argv) > 2 else "/root/.cache/sdsat_vllm/models/smollm2-135m-sdsat-43651bdd9ccc"
store = load_datastore(model + "/sdsat_datastore/datastore.safetensors")
data = json.load(open(sys.argv[1]))["data"]
print(f"datastore: {len(store)} tokens; {len(data)} completions")


def continuation(ends, first=None):
    """The datastore's majority continuation of these occurrences, CAP tokens at most (`first`: the first token
    forced, the rest continued from the occurrences that go on with it)."""
    if first is not None:
        ends = ends[store.tokens[ends + 1] == first] + 1
    m = store._continue(ends, 0, CAP - (first is not None), frozenset()) if len(ends) else None
    return ([first] if first is not None else []) + (m.tokens if m else [])


def accepted(chain, truth):
    a = 0
    while a < len(chain) and a < len(truth) and chain[a] == truth[a]:
        a += 1
    return a


stats = collections.defaultdict(list)
for item in data:
    prompt, out = item["prompt"], item["output"]
    for i in range(1, len(out)):
        text, truth = np.array(prompt + out[:i]), out[i:i + CAP]
        chains = {}
        m = suffix_match(text, CAP, stop=frozenset())
        chains["text"] = m.tokens if m else []
        d = store.match(text, CAP)
        chains["ds_longest"] = d.tokens if d else []
        per_n = {}
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            ends = store.occurrences(text, n)
            if not ends.size:
                break
            per_n[n] = ends
        ns = sorted(per_n, reverse=True)  # the suffix lengths that occur, longest first
        for cap in (1, 2, 3, 4, 6):
            chains[f"ds_cap{cap}"] = continuation(per_n[min(ns[0], cap)]) if ns else []
        for k in (2, 4, 8, 16, 32):
            n = next((n for n in ns if len(per_n[n]) >= k), ns[-1] if ns else None)
            chains[f"ds_occ{k}"] = continuation(per_n[n]) if n else []
        if ns:
            nxt = store.tokens[per_n[ns[0]] + 1]
            ids, counts = np.unique(nxt[nxt != SEPARATOR], return_counts=True)
            ranked = ids[np.argsort(-counts, kind="stable")]
            for r in (2, 3):
                chains[f"ds_second{r}"] = continuation(per_n[ns[0]], int(ranked[r - 1])) if len(ranked) >= r else []
        scores = {name: accepted(chain, truth) for name, chain in chains.items()}
        for name, a in scores.items():
            stats[name].append(a)
        stats["oracle(text, ds_longest)"].append(max(scores["text"], scores["ds_longest"]))
        stats["oracle(text, every ds rule)"].append(max(scores.values()))

print(f"{'rule':30s} {'mean':>6s} {'>=1':>6s} {'>=2':>6s}   (tokens accepted of the first {CAP}, over every position)")
for name, v in stats.items():
    v = np.array(v)
    print(f"{name:30s} {v.mean():6.3f} {np.mean(v >= 1):6.3f} {np.mean(v >= 2):6.3f}")
