"""benchmarks/simulate_policy.py's replay on hand-built completions (no model): the step rule (fresh
SAT rows only after a step whose drafts were all accepted), the cost accounting, and that lookup
drafts pay on text that repeats itself where the SATs are useless, and do not where nothing repeats."""

from __future__ import annotations

import random

import pytest

from benchmark_scripts import load_benchmark

SAT = 99
VOCAB = 100


def completion(prompt, output, right_sats=False):
    """SAT rows at every position: argmax the true next-next tokens (right_sats) or a token that never
    occurs (40), confident either way."""
    rows = []
    for i in range(len(output)):
        nxt = [output[i + 1 + j] if right_sats and i + 1 + j < len(output) else 40 for j in range(5)]
        rows.append({"argmax": nxt, "q": [0.9] * 5, "top": [[t, 41] for t in nxt], "top_p": [[0.9, 0.05]] * 5})
    return {"prompt": prompt, "output": output, "rows": rows}


def first_offset_wrong(item, share, seed=0):
    """`item` with the first SAT offset's argmax wrong (40, a token that never occurs) at `share` of positions."""
    wrong = random.Random(seed)
    return {**item, "rows": [dict(row, argmax=[40] + row["argmax"][1:]) if wrong.random() < share else row
                             for row in item["rows"]]}


def test_the_replay_counts_forwards_and_tokens():
    sim = load_benchmark("simulate_policy")
    out = list(range(1, 31))
    # SATs always right, nothing repeats: drafts pay; plain decoding would take 29 forwards after the prefill
    res = sim.replay([completion([50, 51], out, right_sats=True)], 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    assert res["tau"] > 1.5 and res["forwards"] < 29 and res["speedup"] > 1.2
    # a speculative step's own cost (c) is charged to the steps that carry a draft or a SAT: drafts still
    # pay here, for less
    costly = sim.replay([completion([50, 51], out, right_sats=True)], 0.03, None, None, 5, frozenset({SAT}), VOCAB,
                        overhead=0.5)
    assert costly["tau"] > 1.1 and costly["speedup"] < res["speedup"]
    # SATs never right: the policy learns to back off, close to plain decoding (also with c)
    res = sim.replay([completion([50, 51], out)] * 4, 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    assert res["tau"] == pytest.approx(1.0) and 0.8 < res["speedup"] <= 1.0
    costly = sim.replay([completion([50, 51], out)] * 4, 0.03, None, None, 5, frozenset({SAT}), VOCAB, overhead=0.5)
    assert costly["tau"] == pytest.approx(1.0) and 0.8 < costly["speedup"] <= 1.0


def test_lookup_pays_on_text_that_repeats_itself():
    sim = load_benchmark("simulate_policy")
    motif = [3, 4, 5, 6, 7, 8, 9, 10]
    data = [completion(motif * 2, motif * 6) for _ in range(3)]
    sat_only = sim.replay(data, 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    lookup = sim.replay(data, 0.03, "chains", None, 5, frozenset({SAT}), VOCAB)
    v1 = sim.replay(data, 0.03, "v1", 1, 5, frozenset({SAT}), VOCAB)
    assert lookup["tau"] > 2.5 and lookup["speedup"] > 1.8 * sat_only["speedup"] and lookup["lookup_forwards"] > 0
    assert v1["tau"] > 2.5
    suffix = sim.replay_suffix(data, 0.03, 5)
    if suffix is not None:  # arctic-inference installed: vLLM's suffix decoding finds the motif too
        assert suffix["tau"] > 2.0


def test_a_block_after_x_makes_fresh_rows_after_a_first_draft_rejected():
    sim = load_benchmark("simulate_policy")
    out = list(range(1, 41))
    right = completion([50, 51], out, right_sats=True)
    # the first SAT offset is wrong at 40% of positions, the rest right: first drafts are rejected now
    # and then, and after each rejection only the block after x holds fresh rows
    flaky = first_offset_wrong(right, 0.4)
    plain = sim.replay([flaky] * 3, 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    block0 = sim.replay([flaky] * 3, 0.03, None, None, 5, frozenset({SAT}), VOCAB, block="both")
    assert block0["forwards"] < plain["forwards"] and block0["tau"] > plain["tau"]
    # nothing rejected: the block is never read, but still paid for
    clean = sim.replay([right], 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    clean0 = sim.replay([right], 0.03, None, None, 5, frozenset({SAT}), VOCAB, block="both")
    assert clean0["forwards"] == clean["forwards"] and clean0["speedup"] < clean["speedup"]


def test_the_block_at_x_holds_fresh_rows_after_any_rejection_at_no_extra_tokens():
    """block "x": the step's one SAT block anchored at its first token x (masked from the drafts), its
    SATs a + 1.. drafting the next step after a accepted drafts. Where first drafts are mostly rejected
    the next step still has drafts, at no extra tokens: fewer forwards than "end" (fused). Where every
    draft is right the accepted drafts use up its rows (the policy sizes the tail for a block after the
    drafts): more forwards than "end". A block of garbage gives nothing; an unknown placement is refused."""
    sim = load_benchmark("simulate_policy")
    out = list(range(1, 41))
    right = completion([50, 51], out, right_sats=True)
    flaky = first_offset_wrong(right, 0.8)
    end = sim.replay([flaky] * 3, 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    at_x = sim.replay([flaky] * 3, 0.03, None, None, 5, frozenset({SAT}), VOCAB, block="x")
    assert at_x["forwards"] < end["forwards"] and at_x["tau"] > end["tau"] and at_x["speedup"] > end["speedup"]
    end = sim.replay([right], 0.03, None, None, 5, frozenset({SAT}), VOCAB)
    at_x = sim.replay([right], 0.03, None, None, 5, frozenset({SAT}), VOCAB, block="x")
    assert at_x["forwards"] > end["forwards"]
    useless = sim.replay([completion([50, 51], out)] * 3, 0.03, None, None, 5, frozenset({SAT}), VOCAB, block="x")
    assert useless["tau"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="block must be one of"):
        sim.replay([right], 0.03, None, None, 5, frozenset({SAT}), VOCAB, block="middle")


def test_sat_rows_of_every_position_in_one_forward_equal_one_forward_per_position():
    import torch
    from tiny_models import make_tiny_model

    sim = load_benchmark("simulate_policy")
    model, tok = make_tiny_model()
    sat = [tok.pad_token_id] * 3  # any token id serves: this compares two ways of computing the same rows
    prompt, output = [5, 17, 99, 42, 7], [11, 3, 250, 8, 64, 19]
    with torch.no_grad():
        fast = sim.sat_logprobs_at_every_position(model, prompt, output, sat)
        for i in range(len(output)):
            logits = model(torch.tensor([prompt + output[:i] + sat])).logits[0, -len(sat):]
            torch.testing.assert_close(fast[i], torch.log_softmax(logits, -1), atol=1e-4, rtol=1e-4)


def test_sat_agreement_counts_each_offset_against_the_token_it_drafts():
    """SAT k of the block after output[:i] drafts output[i+k]: rows built right agree 1.0 at every offset,
    rows right only at offset 1 agree 1.0 there and 0 beyond, and rows shifted by one (drafting
    output[i+k-1], the off-by-one a wrong index would hide) agree 0; the positions are bucketed."""
    sim = load_benchmark("simulate_policy")
    out = list(range(1, 21))
    right = sim.sat_agreement([completion([50], out, right_sats=True)], 5, bucket=8)
    assert right["offsets"] == [1.0] * 5
    assert right["positions"] == [19, 18, 17, 16, 15]  # the last token has no offset-1 target after it
    assert right["offset1_by_position"] == {"1-8": 1.0, "9-16": 1.0, "17-24": 1.0}
    first_only = completion([50], out, right_sats=True)
    for row in first_only["rows"]:
        row["argmax"] = row["argmax"][:1] + [40] * 4
    assert sim.sat_agreement([first_only], 5)["offsets"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    shifted = completion([50], out)
    for i, row in enumerate(shifted["rows"]):
        row["argmax"] = [out[i + j] if i + j < len(out) else 40 for j in range(5)]
    assert sim.sat_agreement([shifted], 5)["offsets"] == [0.0] * 5


def test_the_replay_rows_are_as_wide_as_the_models_vocabulary(tmp_path):
    """A datastore chain may carry any token of the vocabulary, also ids no cached SAT row holds: the
    replay's rows take their width from the model's config (a width from the rows' largest id made
    the datastore variants fail with an index error on `-g1`'s data)."""
    import json

    sim = load_benchmark("simulate_policy")
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 49153, "model_type": "llama"}))
    assert sim.model_vocab(tmp_path) == 49153
    row = completion([50], [1, 2, 3], right_sats=True)["rows"][0]  # SAT 1 drafts 2 at 0.9
    lp = sim._logprobs(row, 2, sim.model_vocab(tmp_path))
    assert lp.shape == (2, 49153) and lp[0, 49152] == float("-inf") and lp[0, 2].exp().item() > 0.5
