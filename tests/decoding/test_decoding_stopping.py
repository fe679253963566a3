"""StopChecker against the obvious reference (decode everything after every token): same tokens
taken, same finish reason, same text, for random outputs cut into random step sizes."""

import random

import pytest

from sdsat_vllm.decoding.stopping import StopChecker
from tiny_models import make_tiny_tokenizer

TEXT = "héllo wörld 😀 日本語 def f(x):\n    return x  # ok ✓\nclass A:\n    pass\n" * 3


def reference(tokenizer, ids, max_new_tokens, stop, eos):
    """Plain decoding's stopping rule, written the slow way."""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if ids[n - 1] in eos:
            return ids[:n], "eos", text
        if hits:
            return ids[:n], "stop", text[: min(hits)]
        if n >= max_new_tokens:
            return ids[:n], "length", text
    return ids, None, tokenizer.decode(ids, skip_special_tokens=True)


def run_checker(tokenizer, ids, max_new_tokens, stop, eos, rng):
    checker = StopChecker(tokenizer, eos, max_new_tokens, stop)
    i = 0
    while i < len(ids) and not checker.finished:
        step = rng.randint(1, 6)  # a speculative step commits 1..K+1 tokens at once
        checker.commit(ids[i : i + step])
        i += step
    return checker.generated, checker.finish_reason, checker.text()


@pytest.mark.parametrize("seed", range(4))
def test_incremental_stop_matches_full_decoding(seed):
    tok = make_tiny_tokenizer()
    rng = random.Random(seed)
    real = tok(TEXT, add_special_tokens=False).input_ids
    for trial in range(40):
        # real text, random ids (split UTF-8 characters, special tokens) or a mix
        ids = [rng.choice([rng.choice(real), rng.randrange(len(tok))]) for _ in range(80)] if trial % 3 == 0 else real[:]
        full = tok.decode(ids, skip_special_tokens=True)
        a = rng.randrange(len(full) - 4)
        stop = [full[a : a + rng.randint(1, 4)], "never there"]
        eos = {rng.choice(ids)} if trial % 4 == 1 else set()
        max_new = rng.randint(1, len(ids) + 5)
        want = reference(tok, ids, max_new, stop, eos)
        assert run_checker(tok, ids, max_new, stop, eos, rng) == want, (trial, stop)


def test_a_stop_string_split_across_steps_and_multibyte_characters():
    tok = make_tiny_tokenizer()
    ids = tok(TEXT, add_special_tokens=False).input_ids
    for stop in ("😀 日", "本語", "✓\nclass", "x):\n"):
        for seed in range(3):
            got = run_checker(tok, ids, 10**6, [stop], set(), random.Random(seed))
            assert got == reference(tok, ids, 10**6, [stop], set()) and got[1] == "stop"
            assert got[2] == TEXT[: TEXT.find(stop)]
