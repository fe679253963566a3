"""Fast tests: lookup-backed drafts (sdsat_vllm/vllm_plugin/lookup.py): the suffix match against a search by
hand, the scores of lookup and datastore tokens, the ledger's verdicts (pure Python)."""

import random

import numpy as np
import pytest

from sdsat_vllm.vllm_plugin import lookup
from sdsat_vllm.vllm_plugin.lookup import (LookupLedger, LookupMatch, lookup_prior_q, score_lookup, suffix_candidate,
                                           suffix_match)


def test_suffix_candidate():
    toks = [1, 2, 3, 4, 9, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    assert suffix_candidate(toks, 3) == [5, 7, 1]                 # the latest earlier "1 2 3"
    assert suffix_candidate(toks, 3, max_ngram=2) == [5, 7, 1]    # "2 3" last seen before 5 too
    assert suffix_candidate([5, 6, 7, 8, 1, 2, 3, 4, 6, 7, 8], 2) == [1, 2]  # longest match "6 7 8" wins
    assert suffix_candidate([1, 2, 3, 4, 5], 4) == []             # nothing repeats
    assert suffix_candidate([1, 2, 900, 4, 1, 2], 4, stop={900}) == []  # never a SAT id
    assert suffix_candidate([1, 2, 3, 900, 1, 2], 4, stop={900}) == [3]
    assert suffix_candidate([1, 2, 3, 1, 2], 0) == []
    assert suffix_candidate([7, 7, 7, 7], 2) == [7]                # overlapping occurrence, one token left


def test_suffix_match_reports_the_matched_length():
    toks = [1, 2, 3, 4, 9, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    assert suffix_match(toks, 3) == LookupMatch([5, 7, 1], 3)
    assert suffix_match([4, 1, 8, 9, 1], 2) == LookupMatch([8, 9], 1)     # one token matches (min_ngram 1)
    assert suffix_match([4, 1, 8, 9, 1], 2, min_ngram=2) is None
    assert suffix_match([1, 2, 900, 4, 1, 2], 4, stop={900}) is None        # nothing left before the SAT id
    assert suffix_match([5, 6, 7], 3) is None and suffix_match([5, 6, 5], 0) is None


def _suffix_match_by_hand(toks, max_len, min_ngram, max_ngram, stop):
    # every earlier end position, its match length counted token by token; longest, then latest
    best, start = 0, None
    for i in range(len(toks) - 1):
        n = 0
        while n < max_ngram and i - n >= 0 and toks[i - n] == toks[len(toks) - 1 - n]:
            n += 1
        if n and n >= best:
            best, start = n, i + 1
    if start is None or best < min_ngram:
        return None
    out = []
    for t in toks[start: start + max_len]:
        if t in stop:
            break
        out.append(t)
    return LookupMatch(out, best) if out else None


def test_suffix_match_equals_a_search_by_hand():
    rng = random.Random(3)
    for trial in range(400):
        vocab = rng.choice([2, 3, 5, 40])
        toks = [rng.randrange(vocab) for _ in range(rng.randrange(0, 70))]
        args = (rng.randrange(0, 6), rng.choice([1, 2]), rng.choice([1, 2, 3, 8]), {1} if trial % 4 == 0 else set())
        want = _suffix_match_by_hand(toks, *args)
        assert suffix_match(toks, *args[:3], stop=args[3]) == want, (toks, args)
        assert suffix_match(np.array(toks, dtype=np.int32), *args[:3], stop=args[3]) == want, (toks, args)
    # ids whose bytes hold zeros: a byte pattern may also match across two tokens, which is no match
    for trial in range(300):
        toks = [rng.choice([0, 1, 256, 65536, 257, 1 << 24]) for _ in range(rng.randrange(0, 40))]
        want = _suffix_match_by_hand(toks, 3, 1, 8, set())
        for dtype in (np.int32, np.int64, np.uint16 if max(toks, default=0) < 65536 else np.int64):
            assert suffix_match(np.array(toks, dtype=dtype), 3) == want, (toks, dtype)


def test_suffix_match_is_not_fooled_by_bytes_across_tokens():
    # int32 bytes of 256, 0, 7, 1: 00 01 00 00 | 00 00 00 00 | 07 00 00 00 | 01 00 00 00; the last token's
    # bytes appear at offset 1, straddling 256 and 0: no earlier 1
    assert suffix_match(np.array([256, 0, 7, 1], dtype=np.int32), 2) is None
    # an earlier 1 before the straddling bytes is the match
    assert suffix_match(np.array([1, 9, 256, 0, 7, 1], dtype=np.int32), 2) == LookupMatch([9, 256], 1)


def test_suffix_match_searches_the_window_only():
    toks = [3, 4, 5] + [9] * 10 + [3, 4]
    assert suffix_match(toks, 1) == LookupMatch([5], 2)
    assert suffix_match(toks, 1, window=14) == LookupMatch([5], 1)  # the earlier 3 is outside, its 4 inside
    assert suffix_match(toks, 1, window=12) is None                  # both outside


def test_lookup_scores_combine_the_sat_rows_with_the_match_length():
    assert lookup_prior_q(0) == 0.0 and lookup_prior_q(1) < lookup_prior_q(2) <= lookup_prior_q(6)
    assert lookup_prior_q(50) == lookup_prior_q(6)
    p1 = lookup_prior_q(1)
    # row 0 scores token 0 with 0.5, row 1 token 1 with 0; token 2 has no fresh row: the prior alone
    assert score_lookup(1, [0.5, 0.0], 3) == pytest.approx([1 - 0.5 * (1 - p1), p1, p1])
    assert score_lookup(3, [], 2) == [lookup_prior_q(3)] * 2
    assert score_lookup(3, [1.0, 0.9], 1) == [1.0]


def test_score_datastore():
    """A datastore token's q: the prior of its match length times its share, combined with a fresh SAT
    row's probability like a prompt-lookup token's; below a prompt-lookup match of the same length
    (note_lookup_miss's skip relies on that order)."""
    from sdsat_vllm.vllm_plugin.lookup import DATASTORE_PRIOR_BY_NGRAM, score_datastore

    assert all(d <= p for d, p in zip(DATASTORE_PRIOR_BY_NGRAM, lookup.LOOKUP_PRIOR_BY_NGRAM))
    assert len(DATASTORE_PRIOR_BY_NGRAM) == len(lookup.LOOKUP_PRIOR_BY_NGRAM)
    p2, p9 = DATASTORE_PRIOR_BY_NGRAM[2], DATASTORE_PRIOR_BY_NGRAM[-1]
    assert score_datastore(2, [1.0, 0.5], []) == pytest.approx([p2, p2 * 0.5])
    assert score_datastore(9, [0.5], []) == pytest.approx([p9 * 0.5])  # longer matches: the last entry
    assert score_datastore(2, [1.0, 0.5], [0.6]) == pytest.approx([1 - 0.4 * (1 - p2), p2 * 0.5])
    p1 = DATASTORE_PRIOR_BY_NGRAM[1]  # a 1-token match: the weakest prior
    assert 0 < p1 < p2 and score_datastore(1, [0.5], [0.3]) == pytest.approx([1 - 0.7 * (1 - p1 * 0.5)])
    assert score_datastore(0, [1.0], [0.3]) == pytest.approx([0.3])  # no match: the SAT row alone
    assert score_datastore(3, [], [0.9]) == []


def _match_len(text) -> int:
    m = suffix_match(text, 4)
    return m.ngram if m is not None else 0


def test_the_longest_earlier_suffix_grows_by_at_most_one_token_a_token():
    """What note_lookup_miss's skip rests on: a match of length L now is at most L + 1 long after one
    more token (its last L' - 1 tokens were a match before), on texts full of repeats."""
    rng = random.Random(0)
    for _ in range(20):
        text = []
        for _ in range(300):
            text.append(rng.choice(text[-40:-30]) if len(text) > 40 and rng.random() < 0.5 else rng.randrange(6))
        lens = [_match_len(text[:t]) for t in range(2, len(text) + 1)]
        assert max(b - a for a, b in zip(lens, lens[1:])) == 1  # it does grow by one, never by more
        assert max(lens) >= 5


def test_lookup_ledger_verdicts():
    """Lookups whose chains were worth less than OFF_BELOW of their cost make later ones STRIDE_OFF times
    rarer; worth more than their cost, back to 1; in between the verdict holds; no verdict before a
    window of lookups (the first one shorter), nor without a token's time."""
    led = LookupLedger()
    w, first = LookupLedger.WINDOW, LookupLedger.FIRST_WINDOW
    assert first < w
    led.add_lookups(first - 1, 0.1, 1.0, 0.01)   # spent 10 tokens, worth 1: but the first window is not full
    assert led.stride == 1
    led.add_lookups(1, 0.0, 0.0, None)       # full, but no token time measured yet
    assert led.stride == 1 and led.lookups == first
    led.add_lookups(1, 0.0, 0.0, 0.01)
    assert led.stride == LookupLedger.STRIDE_OFF and (led.lookups, led.seconds, led.worth) == (0, 0.0, 0.0)
    led.add_lookups(first, 0.01, 5.0, 0.01)  # worth 5 against 1 spent, but the next windows are longer
    assert led.stride == LookupLedger.STRIDE_OFF and led.lookups == first
    led.add_lookups(w - first, 0.01, -4.0, 0.01)  # the window whole: worth 1 against 2 spent, the verdict holds
    assert led.stride == LookupLedger.STRIDE_OFF and led.lookups == 0
    led.add_lookups(w, 0.02, 1.9, 0.01)      # spent 2 tokens, worth 1.9: between, the verdict holds
    assert led.stride == LookupLedger.STRIDE_OFF
    led.add_lookups(w // 2, 0.01, 2.5, 0.01)
    led.add_lookups(w // 2, 0.01, -0.4, 0.01)  # worth 2.1 > 2
    assert led.stride == 1
    led.add_lookups(w, 0.02, 1.1, 0.01)      # worth 1.1, over half of 2: holds
    assert led.stride == 1
    led.add_lookups(w, 0.02, 0.9, 0.01)      # under half
    assert led.stride == LookupLedger.STRIDE_OFF
