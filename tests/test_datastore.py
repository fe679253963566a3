"""The datastore of the model's own text (sdsat_vllm/datastore.py) and `sdsat datastore`."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from sdsat_vllm import datastore as D
from sdsat_vllm.datastore import (Datastore, DatastoreError, Datastores, ResponseDatastore, load_datastore, read_metadata,
                                  save_datastore)


def reference_match(docs, text, max_len, stop=frozenset()):
    """Brute force, as the docstring says: the longest suffix of `text` (MIN..MAX_NGRAM tokens) that
    occurs inside one document with a token after it; then, token by token, the continuation most of
    the still-matching occurrences agree on (ties: the smaller id)."""
    for n in range(min(D.MAX_NGRAM, len(text)), D.MIN_NGRAM - 1, -1):
        key = list(text[-n:])
        occ = [(d, i) for d in range(len(docs)) for i in range(n - 1, len(docs[d]) - 1)
               if docs[d][i - n + 1: i + 1] == key]
        if not occ:
            continue
        out, share = [], []
        for j in range(1, max_len + 1):
            nxt = [docs[d][i + j] if i + j < len(docs[d]) else None for d, i in occ]
            live = Counter(t for t in nxt if t is not None)
            if not live:
                break
            tok = min(live, key=lambda t: (-live[t], t))
            if tok in stop:
                break
            out.append(tok)
            share.append(live[tok] / len(occ))
            occ = [o for o, t in zip(occ, nxt) if t == tok]
        return (out, n, share) if out else None
    return None


def test_match_by_hand():
    store = Datastore.from_documents([[1, 2, 3, 4, 5], [9, 2, 3, 4, 7], [1, 2, 3, 4, 5]])
    assert (len(store), store.num_documents) == (15, 3)
    m = store.match([8, 2, 3], 5)  # "8 2 3" is nowhere, "2 3" three times
    assert (m.tokens, m.ngram, m.occurrences) == ([4, 5], 2, 3)
    assert m.share == pytest.approx([1.0, 2 / 3])  # then the documents end
    m = store.match([9, 2, 3], 5)  # the longest match wins
    assert (m.tokens, m.ngram, m.share) == ([4, 7], 3, [1.0, 1.0])
    assert store.match([8, 2, 3], 1).tokens == [4]
    assert store.match([8, 2, 3], 0) is None
    assert store.match([5, 9], 3).ngram == 1  # "5 9" spans two documents: not a match ("9" is)
    assert store.match([7, 6], 3) is None  # "6" is nowhere
    m = store.match([7, 1], 3)  # a 1-token match: "1" twice, each time "2 3 4"
    assert (m.tokens, m.ngram, m.share, m.occurrences) == ([2, 3, 4], 1, [1.0, 1.0, 1.0], 2)
    assert store.match([5], 3) is None  # "5" ends its documents: nothing follows it
    assert store.match([8, 2, 3], 5, stop={4}) is None  # a SAT id is never drafted
    assert store.match([9, 2, 3], 5, stop={7}).tokens == [4]
    assert store.match(list(range(100, 200)) + [9, 2, 3], 5).tokens == [4, 7]  # only the tail is read



def test_occurrences_by_hand():
    # joined: [1 2 3 4 5] sep [9 2 3 4 7] sep [1 2 3 4 5]: documents start at 0, 6 and 12
    store = Datastore.from_documents([[1, 2, 3, 4, 5], [9, 2, 3, 4, 7], [1, 2, 3, 4, 5]])
    assert sorted(store.occurrences([8, 2, 3], 2).tolist()) == [2, 8, 14]  # "2 3", ending at each "3"
    assert store.occurrences([9, 2, 3], 3).tolist() == [8]
    assert store.occurrences([8, 2, 3], 3).size == 0  # "8 2 3" is nowhere
    assert store.occurrences([4, 5], 1).size == 0  # "5" ends its documents: nothing follows it
    assert store.occurrences([3], 2).size == 0  # shorter than n
    for text in ([9, 2, 3], [7, 1], [1, 2, 3, 4]):  # where match continues from
        m = store.match(text, 1)
        assert store.tokens[store.occurrences(text, m.ngram) + 1].tolist().count(m.tokens[0]) >= 1
    with pytest.raises(ValueError, match="n must be in"):
        store.occurrences([1, 2], D.MAX_NGRAM + 1)

def test_match_equals_brute_force():
    rng = random.Random(0)
    for trial in range(30):
        docs = []
        for _ in range(rng.randrange(1, 6)):
            doc = []
            for _ in range(rng.randrange(0, 60)):
                doc.append(rng.choice(doc[-12:-3]) if len(doc) > 12 and rng.random() < 0.4 else rng.randrange(5))
            docs.append(doc)
        store = Datastore.from_documents(docs)
        for _ in range(40):
            src = rng.choice(docs)
            text = src[: rng.randrange(len(src) + 1)] + [rng.randrange(5) for _ in range(rng.randrange(3))]
            want = reference_match(docs, text, 4, stop={4} if trial % 3 == 0 else frozenset())
            got = store.match(np.array(text, dtype=np.int64), 4, stop={4} if trial % 3 == 0 else frozenset())
            assert (None if got is None else (got.tokens, got.ngram, pytest.approx(got.share))) == want, (docs, text)


def test_continuations_are_counted_once_and_kept(monkeypatch):
    """A continuation once counted is kept (the index never changes), to MEMO_DEPTH positions however few
    were asked for: asked again, for as many tokens or fewer, it is the same answer's prefix, handed out
    as fresh lists; another stop set is counted apart, and so is a longer ask of a continuation that
    reached the depth counted; the oldest is dropped past MEMO_ENTRIES."""
    monkeypatch.setattr(D, "MEMO_ENTRIES", 3)
    monkeypatch.setattr(D, "MEMO_DEPTH", 2)
    store = Datastore.from_documents([[1, 2, 3, 4, 5, 6], [9, 2, 3, 4, 7], [1, 2, 3, 4, 5, 6]])
    counted = []
    real = Datastore._continue
    monkeypatch.setattr(Datastore, "_continue", lambda self, *a: counted.append(a[1:]) or real(self, *a))
    first = store.match([8, 2, 3], 1)  # one token asked, MEMO_DEPTH counted
    assert (first.tokens, first.ngram, first.share, first.occurrences) == ([4], 2, [1.0], 3)
    assert counted == [(2, 2, frozenset())]
    first.tokens.append(99)
    first.share.append(0.5)  # what a caller does with its lists does not reach the next caller
    again = store.match([7, 7, 2, 3], 2)  # another text, the same longest match ("2 3"), within the depth
    assert (again.tokens, again.ngram, again.share, again.occurrences) == ([4, 5], 2, [1.0, pytest.approx(2 / 3)], 3)
    assert len(counted) == 1
    assert store.match([8, 2, 3], 5).tokens == [4, 5, 6]  # beyond the depth: counted again, deeper
    assert counted[1:] == [(2, 5, frozenset())]
    assert store.match([8, 2, 3], 4).tokens == [4, 5, 6] and len(counted) == 2  # it ended before 5: complete
    assert store.match([8, 2, 3], 5, stop={5}).tokens == [4] and len(counted) == 3  # another stop set: apart
    assert store.match([7, 6], 3) is None and store.match([7, 6], 3) is None  # no match: no count at all
    store.match([9, 2, 3], 5)
    store.match([5, 1, 2], 5)  # a fourth continuation: the first one kept is dropped
    assert len(counted) == 5 and len(store._memo) == 3
    store.match([8, 2, 3], 5)
    assert len(counted) == 6 and len(store._memo) == 3


def test_a_count_to_the_depth_answers_every_shorter_ask():
    """The memo's prefix rule against counting afresh: every max_len gets what a datastore without a
    memo would give (a fresh Datastore per call), whatever was asked before."""
    rng = random.Random(5)
    docs = [[rng.randrange(4) for _ in range(rng.randrange(5, 40))] for _ in range(6)]
    store = Datastore.from_documents(docs)
    for _ in range(300):
        src = rng.choice(docs)
        text = src[: rng.randrange(1, len(src) + 1)]
        max_len, stop = rng.randrange(1, 8), frozenset({3}) if rng.random() < 0.3 else frozenset()
        got, want = store.match(text, max_len, stop), Datastore.from_documents(docs).match(text, max_len, stop)
        assert (None if got is None else (got.tokens, got.ngram, got.share, got.occurrences)) == \
            (None if want is None else (want.tokens, want.ngram, want.share, want.occurrences)), (text, max_len)


def test_common_matches_count_a_spread_of_their_occurrences(monkeypatch):
    monkeypatch.setattr(D, "MAX_OCCURRENCES", 4)
    store = Datastore.from_documents([[1, 2, 3]] * 3 + [[1, 2, 6]] * 7)
    m = store.match([1, 2], 2)
    assert m.occurrences == 10 and m.tokens == [6]  # 4 of the 10 counted, spread: first and last included
    assert m.share[0] in (0.5, 0.75)


def test_response_datastore_matches_what_a_datastore_of_its_responses_would():
    """Responses added one by one (a finished request each) are searched as a Datastore built from
    them; the newest max_tokens are kept, whole responses, the oldest dropped first."""
    rng = random.Random(1)
    store = ResponseDatastore(60)
    assert store.match([1, 2], 3) is None and len(store) == 0
    kept: list[list[int]] = []
    for step in range(40):
        doc = [rng.randrange(6) for _ in range(rng.randrange(0, 25))]
        store.add(doc)
        if len(doc) >= 2:  # shorter ones hold no continuation
            kept.append(doc)
        while sum(map(len, kept)) > 60:
            kept.pop(0)
        assert len(store) == sum(map(len, kept))
        for _ in range(5):
            text = [rng.randrange(6) for _ in range(rng.randrange(1, 6))]
            got, want = store.match(text, 4), Datastore.from_documents(kept).match(text, 4)
            if store._pending:  # a rebuild is not due yet: the index lags by less than 1/8 of it
                assert store._pending * ResponseDatastore.REBUILD_FRACTION < len(store)
            else:
                assert got == want, (kept, text)
    store.add(list(range(100)))  # longer than what is kept: its newest tokens
    assert len(store) == 60 and store.match([97, 98], 3).tokens == [99]


def test_response_datastore_refuses_bad_input():
    for bad in (0, -3, True, 2.5):
        with pytest.raises(DatastoreError, match="at least 1 token"):
            ResponseDatastore(bad)
    with pytest.raises(DatastoreError, match="non-negative"):
        ResponseDatastore(10).add([1, -1, 2])


def test_datastores_take_the_longest_match():
    shipped = Datastore.from_documents([[1, 2, 3, 4], [7, 2, 5]])
    responses = ResponseDatastore(100)
    both = Datastores(shipped, responses)
    assert both.match([9, 2], 2).tokens == [3, 4]  # the shipped one alone (1-token match "2": 3 and 5 tie)
    responses.add([8, 9, 2, 6, 6])
    assert both.match([9, 2], 2).tokens == [6, 6]  # "9 2" (2 tokens) beats "2" (1 token)
    assert both.match([7, 2], 2).tokens == [5]  # "7 2" is the shipped one's
    assert Datastores().match([1, 2], 3) is None


def test_bad_token_arrays_are_refused():
    with pytest.raises(DatastoreError, match="1-D integer"):
        Datastore(np.zeros((2, 2), np.int32))
    with pytest.raises(DatastoreError, match=">= 0"):
        Datastore(np.array([1, -5, 2]))
    with pytest.raises(DatastoreError, match="non-negative"):
        Datastore.from_documents([[1, -2]])
    assert Datastore.from_documents([]).match([1, 2], 3) is None


def test_file_round_trip_and_errors(tmp_path):
    path = save_datastore(tmp_path / "sub" / "ds.safetensors", [[1, 2, 3, 4], [], [2, 3, 9]], {"model": "m"})
    assert not list(tmp_path.rglob("*.part"))  # written beside, then moved into place
    meta = read_metadata(path)
    assert (meta["format"], meta["num_tokens"], meta["num_documents"], meta["info"]) == (D.FORMAT, "7", "2", {"model": "m"})
    store = load_datastore(path, vocab_size=10)
    assert store.match([7, 2, 3], 3).tokens == [4] and store.num_documents == 2
    with pytest.raises(DatastoreError, match="outside the served model's vocabulary"):
        load_datastore(path, vocab_size=9)
    with pytest.raises(DatastoreError, match="does not exist"):
        load_datastore(tmp_path / "none.safetensors")
    (tmp_path / "junk").write_bytes(b"\x00" * 40)
    with pytest.raises(DatastoreError, match="not a readable safetensors file"):
        read_metadata(tmp_path / "junk")
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros(3, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(DatastoreError, match="not an SDSAT datastore"):
        load_datastore(tmp_path / "model.safetensors")
    with pytest.raises(DatastoreError, match="no tokens"):
        save_datastore(tmp_path / "empty.safetensors", [[], []], {})
    assert not (tmp_path / "empty.safetensors").exists()


class WordTokenizer:
    """A tokenizer with one id per distinct word (what build_datastore asks of one)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab)) for w in t.split()] for t in texts]}

    def __len__(self):
        return 1000


def test_sdsat_datastore_builds_from_make_data_rows(tmp_path, capsys):
    import gzip

    from sdsat_vllm.training.make_datastore import build_datastore, run

    rows = [{"prompt": "Q1", "completion": "the cat sat on the mat", "model": "m", "model_sha256": "ab"},
            {"prompt": "Q2", "completion": "the cat sat down", "model": "m", "model_sha256": "ab"}]
    src = tmp_path / "rows.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    tok = WordTokenizer()
    done = build_datastore("m", [str(src)], str(tmp_path / "ds.safetensors"), tokenizer=tok)
    assert (done["documents"], done["tokens"]) == (2, 10)
    meta = read_metadata(tmp_path / "ds.safetensors")
    assert meta["info"]["written_by"] == [{"model": "m", "model_sha256": "ab"}]
    assert meta["info"]["sources"][0]["rows"] == 2 and len(meta["info"]["sources"][0]["sha256"]) == 64
    store = load_datastore(tmp_path / "ds.safetensors")
    v = tok.vocab
    assert store.match([v["the"], v["cat"]], 2).tokens == [v["sat"], v["on"]]  # a tie: the smaller id ("on")
    # bad input: a clear error, exit code 2, no file written
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q"}\n')
    args = type("A", (), {"model": "m", "sources": [str(bad)], "out": str(tmp_path / "x.safetensors")})
    assert run(args) == 2
    assert "needs a 'completion' string field" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        build_datastore("m", [str(bad)], str(tmp_path / "x.safetensors"), tokenizer=tok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datastore("m", [str(tmp_path / "nope.jsonl")], str(tmp_path / "x.safetensors"), tokenizer=tok)
