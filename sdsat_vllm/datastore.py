"""A datastore of the served model's own text, for lookup-backed drafts (retrieval drafting, as REST).

Glossary
- datastore: token ids of text the served model wrote itself (its greedy answers to prompts that no
  benchmark uses, `sdsat make-data`), documents separated by SEPARATOR. Built once by
  ``sdsat datastore``, shipped beside an adapter (`datastore.safetensors`), copied into the model
  directory it builds (`sdsat_datastore/datastore.safetensors`), read by the vLLM proposer.
- match: the longest suffix (MIN_NGRAM..MAX_NGRAM tokens) of a request's committed text that occurs
  in the datastore, and the continuation its occurrences agree on most: at each next position the
  token most of the still-matching occurrences continue with (`share`: their fraction).

Why: a prompt lookup (lookup.suffix_match) drafts only what the request's own text already holds. On
prose that does not repeat its prompt, a small model still repeats itself across answers ("Here are
some ...", "In conclusion, ..."): on the norepeat questions, the model's own answers to other
questions predict a continuation at 65% of the positions (benchmarks/results, section 24). The
proposer scores a datastore chain like a prompt-lookup chain (with the SAT rows' probabilities of
its tokens where it has them) and sends whichever chain is expected to be accepted further; vLLM's
rejection sampler verifies it like any draft, so the output is unchanged whatever the datastore holds.

Index: for every n in MIN_NGRAM..MAX_NGRAM, a 64-bit polynomial hash of each n-gram that has a next
token in its document, sorted, with the n-gram's end position: a lookup bisects over n, one binary
search per n it tries (a hash collision can only cost a rejected draft). Pure numpy; no torch.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

#: the token id that separates documents in a datastore's token array
SEPARATOR = -1
#: match lengths searched. Even a 1-token match says something: where nothing longer matched, the
#: token that most often follows the last one was the model's next token 27% of the time on norepeat
#: (results 25.1), and those steps had no other draft at all
MIN_NGRAM, MAX_NGRAM = 1, 8
#: occurrences of a match whose continuations are counted (evenly spread over all of them): a
#: common bigram occurs thousands of times, and counting them all costs more than it tells
MAX_OCCURRENCES = 256
#: continuations kept per datastore (:meth:`Datastore.match`): a match with many occurrences costs one
#: count per position (~90 us for 5 positions on this 2-core CPU), and the common n-grams that have many
#: are the ones requests meet again and again (under load, every request in back-off looks up every
#: few steps, results 27)
MEMO_ENTRIES = 8192
#: positions a continuation is counted to when first asked for fewer (the shipped adapters draft at most
#: 5 tokens a step): asks of other lengths for the same match then share one count (Datastore.match)
MEMO_DEPTH = 5
#: where a built model directory carries it (copied from the adapter's ADAPTER_FILE): in a folder of
#: its own, because vLLM loads every *.safetensors file at a model directory's top level as weights
MODEL_DIR_FILE = "sdsat_datastore/datastore.safetensors"
#: the file name in an adapter directory
ADAPTER_FILE = "datastore.safetensors"
FORMAT = "sdsat-datastore/1"
_TENSOR = "tokens"
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64
_MASK = (1 << 64) - 1

__all__ = ["ADAPTER_FILE", "Datastore", "DatastoreError", "DatastoreMatch", "Datastores", "FORMAT", "MAX_NGRAM",
           "MAX_OCCURRENCES", "MIN_NGRAM", "MODEL_DIR_FILE", "ResponseDatastore", "SEPARATOR", "load_datastore", "model_datastore", "save_datastore"]


class DatastoreError(ValueError):
    """A datastore file that cannot be used (missing, not a datastore, damaged, ids out of range)."""


@dataclass(frozen=True, slots=True)
class DatastoreMatch:
    """A continuation found in the datastore: `tokens`, the length of the matched suffix (`ngram`),
    and per token the fraction of the occurrences still matching before it that continue with it."""

    tokens: list[int]
    ngram: int
    share: list[float]
    occurrences: int  # occurrences of the matched suffix (all of them, not only the ones counted)


class Datastore:
    """The hashed n-gram index of a token array (documents separated by SEPARATOR)."""

    __slots__ = ("tokens", "num_documents", "_hashes", "_ends", "_memo")

    def __init__(self, tokens: np.ndarray):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise DatastoreError(f"a datastore is a 1-D integer token array, got {tokens.dtype} of shape {tokens.shape}")
        if tokens.size and int(tokens.min()) < SEPARATOR:
            raise DatastoreError(f"token ids must be >= 0 (or {SEPARATOR} between documents), found {int(tokens.min())}")
        # padded with separators so a continuation read past the end stops there
        self.tokens = np.concatenate([tokens.astype(np.int64), np.full(MAX_NGRAM + 64, SEPARATOR, np.int64)])
        # a document starts where a token follows a separator (or the array's start)
        self.num_documents = int(((tokens != SEPARATOR) & np.concatenate([[True], tokens[:-1] == SEPARATOR])).sum())
        self._hashes: dict[int, np.ndarray] = {}
        self._ends: dict[int, np.ndarray] = {}
        # (ngram, first index of its occurrences, stop) -> (positions counted, tokens, share, occurrences), or
        # (positions counted, None) where nothing continues: the index never changes, so a continuation once
        # counted is the continuation (oldest dropped first)
        self._memo: dict[tuple, tuple] = {}
        t = self.tokens
        n_tok = len(tokens)
        sep = (t == SEPARATOR).astype(np.int64)
        seps_before = np.concatenate([[0], np.cumsum(sep)])  # seps_before[i]: separators in t[:i]
        vals = (t + 1).astype(np.uint64)
        ends = np.arange(n_tok, dtype=np.int64)
        has_next = t[1:n_tok + 1] != SEPARATOR
        for n in range(1, MAX_NGRAM + 1):
            # h[i]: hash of the n-gram ending at i, the window t[i-n+1..i]
            h = vals.copy() if n == 1 else np.concatenate([np.zeros(1, np.uint64), h[:-1] * _MULT + vals[1:]])
            if n < MIN_NGRAM:
                continue
            start = ends - n + 1
            ok = (start >= 0) & has_next
            ok[ok] = seps_before[ends[ok] + 1] == seps_before[start[ok]]
            e = ends[ok]
            order = np.argsort(h[e], kind="stable")
            self._hashes[n] = h[e][order]
            self._ends[n] = e[order]

    def __len__(self) -> int:
        return int((self.tokens != SEPARATOR).sum())

    @staticmethod
    def from_documents(docs: Iterable[Sequence[int]]) -> "Datastore":
        return Datastore(join_documents(docs))

    def match(self, text: Sequence[int], max_len: int, stop: frozenset[int] | set[int] = frozenset()) -> DatastoreMatch | None:
        """The continuation of `text`'s longest suffix found here, at most max_len tokens, cut before
        the first id in `stop` (SAT ids: a draft must never be one); None when nothing matches.

        text: [num_tokens] int, the request's committed tokens (only the last MAX_NGRAM are read)"""
        if max_len <= 0:
            return None
        tail = np.asarray(text)[-MAX_NGRAM:].tolist()
        keys = _suffix_keys(tail)
        # the longest n whose suffix occurs, by bisection: an n-gram's occurrence (with a next token, in
        # one document) is one of its own suffix too, so the lengths that occur are MIN_NGRAM..longest
        found, lo_n, hi_n = None, MIN_NGRAM, len(tail)
        while lo_n <= hi_n:
            n = (lo_n + hi_n) // 2
            hashes, h = self._hashes[n], np.uint64(keys[n])  # not the int: searchsorted would convert the array
            lo = int(hashes.searchsorted(h, side="left"))
            if lo < len(hashes) and hashes.item(lo) == keys[n]:
                found, lo_n = (n, lo, h), n + 1
            else:
                hi_n = n - 1
        if found is None:
            return None
        n, lo, h = found
        # a continuation counted to depth d answers every max_len <= d with its first max_len tokens (each
        # position's count depends only on the tokens before it), and one that ended before d every max_len:
        # asks of different lengths share one count (proposer.lookup_chains asks for cap tokens, and for
        # cap - 1 after a fresh SAT row's first draft; vLLM's per-batch-size count moves cap)
        key = (n, lo, stop if isinstance(stop, frozenset) else frozenset(stop))
        kept = self._memo.get(key)
        if kept is None or (kept[0] < max_len and kept[1] is not None and len(kept[1]) == kept[0]):
            depth = max(max_len, MEMO_DEPTH)
            hi = int(self._hashes[n].searchsorted(h, side="right"))
            match = self._continue(self._ends[n][lo:hi], n, depth, stop)
            if key not in self._memo and len(self._memo) >= MEMO_ENTRIES:
                del self._memo[next(iter(self._memo))]
            kept = self._memo[key] = (depth, None) if match is None else (depth, tuple(match.tokens),
                                                                          tuple(match.share), match.occurrences)
        if kept[1] is None:
            return None
        # fresh lists: a caller may change what it is given
        return DatastoreMatch(list(kept[1][:max_len]), n, list(kept[2][:max_len]), kept[3])

    def occurrences(self, text: Sequence[int], n: int) -> np.ndarray:
        """[k] int: where the index has the last n tokens of `text` (the positions of their last token,
        in index order; empty where they never occur with a next token in one document). n: MIN_NGRAM..MAX_NGRAM."""
        if not MIN_NGRAM <= n <= MAX_NGRAM:
            raise ValueError(f"n must be in {MIN_NGRAM}..{MAX_NGRAM}, got {n}")
        tail = [int(x) for x in np.asarray(text)[-n:]]
        if len(tail) < n:
            return np.zeros(0, np.int64)
        hashes, h = self._hashes[n], np.uint64(_suffix_keys(tail)[n])
        lo, hi = int(hashes.searchsorted(h, side="left")), int(hashes.searchsorted(h, side="right"))
        return self._ends[n][lo:hi]

    def _continue(self, ends: np.ndarray, ngram: int, max_len: int, stop) -> DatastoreMatch | None:
        occurrences = len(ends)
        if occurrences > MAX_OCCURRENCES:
            ends = ends[np.linspace(0, occurrences - 1, MAX_OCCURRENCES).astype(np.int64)]
        out, share = [], []
        if occurrences == 1:  # one occurrence (most long matches): its continuation, read off
            for tok in self.tokens[ends[0] + 1: ends[0] + 1 + max_len].tolist():
                if tok == SEPARATOR or tok in stop:
                    break
                out.append(tok)
            return DatastoreMatch(out, ngram, [1.0] * len(out), 1) if out else None
        # [k, max_len] the occurrences' continuations, as lists: k is 5 at the median lookup and at most
        # MAX_OCCURRENCES, and a count in Python costs less than numpy's per-call overhead (np.unique at
        # every position was ~90% of a lookup's time; results 41). The padding stops reads past the end.
        rows = self.tokens[ends[:, None] + np.arange(1, max_len + 1)].tolist()
        for j in range(max_len):
            counts: dict[int, int] = {}
            for row in rows:
                tok = row[j]
                if tok != SEPARATOR:
                    counts[tok] = counts.get(tok, 0) + 1
            if not counts:
                break
            tok, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: the smallest id
            if tok in stop:
                break
            out.append(tok)
            share.append(count / len(rows))
            rows = [row for row in rows if row[j] == tok]
        return DatastoreMatch(out, ngram, share, occurrences) if out else None


#: MULT^k (mod 2^64), k = 0..MAX_NGRAM - 1: the weights of _suffix_keys, computed once
_POWERS = [pow(int(_MULT), k, 1 << 64) for k in range(MAX_NGRAM)]


def _suffix_keys(tail: Sequence[int]) -> dict[int, int]:
    """{n: the index's hash of tail's last n tokens} for n = 1..len(tail): sum_k (x[-1-k] + 1) * MULT^k (mod 2^64)."""
    powers = _POWERS if len(tail) <= len(_POWERS) else [pow(int(_MULT), k, 1 << 64) for k in range(len(tail))]
    key, keys = 0, {}
    for n in range(1, len(tail) + 1):
        key = (key + (int(tail[-n]) + 1) * powers[n - 1]) & _MASK
        keys[n] = key
    return keys


class ResponseDatastore:
    """The responses of the requests this engine finished, searched like a :class:`Datastore`: a
    datastore that grows while it serves. Requests alike get answers alike (the norepeat questions
    share five templates; vLLM's suffix decoding keeps such a cache of past responses, its
    `suffix_decoding_max_cached_requests`), and a shipped datastore cannot know what the engine's
    users ask. The newest `max_tokens` tokens are kept (whole responses; older ones dropped first).

    A Datastore is immutable (sorted arrays), so this one is rebuilt from the kept responses, at the
    first lookup after the tokens added since the last rebuild reach 1/REBUILD_FRACTION of the
    indexed ones: each token is indexed ~REBUILD_FRACTION times over its life (on this 2-core CPU a
    rebuild of 65,536 tokens takes ~0.1 s, once per ~8k tokens generated: ~7 us a token)."""

    REBUILD_FRACTION = 8
    __slots__ = ("max_tokens", "_docs", "_kept", "_pending", "_index")

    def __init__(self, max_tokens: int):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise DatastoreError(f"a response datastore keeps at least 1 token, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self._docs: deque[np.ndarray] = deque()
        self._kept = self._pending = 0
        self._index: Datastore | None = None

    def __len__(self) -> int:
        return self._kept

    def add(self, tokens: Sequence[int]) -> None:
        """A finished request's response (its generated token ids)."""
        doc = np.asarray(tokens, dtype=np.int64)[-self.max_tokens:]
        if doc.size < 2:  # nothing in it follows anything
            return
        if doc.ndim != 1 or int(doc.min()) < 0:
            raise DatastoreError("a response is a list of non-negative token ids")
        self._docs.append(doc)
        self._kept += doc.size
        self._pending += doc.size
        while self._kept > self.max_tokens:
            self._kept -= self._docs.popleft().size

    def match(self, text: Sequence[int], max_len: int, stop: frozenset[int] | set[int] = frozenset()) -> DatastoreMatch | None:
        """As :meth:`Datastore.match`, over the responses kept."""
        if self._pending and self._pending * self.REBUILD_FRACTION >= self._kept - min(self._pending, self._kept):
            self._index = Datastore(join_documents(self._docs)) if self._docs else None
            self._pending = 0
        return None if self._index is None else self._index.match(text, max_len, stop)


class Datastores:
    """Several datastores searched as one: the longest match wins (then the one more occurrences
    back), e.g. the shipped datastore and the engine's ResponseDatastore."""

    __slots__ = ("stores",)

    def __init__(self, *stores: Datastore | ResponseDatastore):
        self.stores = tuple(stores)

    def match(self, text: Sequence[int], max_len: int, stop: frozenset[int] | set[int] = frozenset()) -> DatastoreMatch | None:
        best = None
        for store in self.stores:
            m = store.match(text, max_len, stop)
            if m is not None and (best is None or (m.ngram, m.occurrences) > (best.ngram, best.occurrences)):
                best = m
        return best


def model_datastore(model_dir: str | os.PathLike) -> Path | None:
    """The datastore a model directory carries (MODEL_DIR_FILE), None where it has none: what the
    `datastore` option's "auto" loads."""
    path = Path(model_dir) / MODEL_DIR_FILE
    return path if path.is_file() else None


def join_documents(docs: Iterable[Sequence[int]]) -> np.ndarray:
    """[num_tokens + num_docs] int32: the documents' tokens, each followed by SEPARATOR."""
    parts = []
    for d in docs:
        a = np.asarray(d, dtype=np.int64)
        if a.size:
            if a.ndim != 1 or int(a.min()) < 0:
                raise DatastoreError("a document is a list of non-negative token ids")
            parts.extend([a, np.array([SEPARATOR])])
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def save_datastore(path: str | os.PathLike, docs: Iterable[Sequence[int]], metadata: dict) -> Path:
    """Write the documents as a datastore file (safetensors; written beside, then moved into place)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tokens = join_documents(docs)
    if not (tokens != SEPARATOR).any():
        raise DatastoreError("no tokens to store: every document is empty")
    meta = {"format": FORMAT, "num_tokens": str(int((tokens != SEPARATOR).sum())),
            "num_documents": str(int((tokens == SEPARATOR).sum())), "info": json.dumps(metadata, sort_keys=True)}
    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file({_TENSOR: tokens}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata (its `info` decoded); DatastoreError when it is not a datastore file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DatastoreError(f"datastore {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise DatastoreError(f"{path} is not a readable safetensors file ({e}); rebuild it with `sdsat datastore`") from e
    if meta.get("format") != FORMAT or keys != [_TENSOR]:
        raise DatastoreError(f"{path} is not an SDSAT datastore (format {meta.get('format')!r}, tensors {keys}; "
                             f"expected {FORMAT!r} with one tensor {_TENSOR!r}); build one with `sdsat datastore`")
    meta["info"] = json.loads(meta.get("info") or "{}")
    return meta


def load_datastore(path: str | os.PathLike, vocab_size: int | None = None) -> Datastore:
    """The index of a datastore file, checked: its format, and (given vocab_size) that every id is a
    token of the served model's vocabulary."""
    from safetensors.numpy import load_file

    read_metadata(path)
    tokens = load_file(str(path))[_TENSOR]
    if tokens.dtype != np.int32 or tokens.ndim != 1:
        raise DatastoreError(f"{path}: tokens must be a 1-D int32 array, got {tokens.dtype} of shape {tokens.shape}")
    if vocab_size is not None and tokens.size and int(tokens.max()) >= vocab_size:
        raise DatastoreError(f"{path} holds token id {int(tokens.max())}, outside the served model's vocabulary "
                             f"(size {vocab_size}): it was built for another tokenizer")
    return Datastore(tokens)
