"""The pure parts of benchmarks/ablate_sat_training.py (the SAT-training ablation): every row's
command and the steps its token budget buys, the export command of `--decode`, and the table."""

from __future__ import annotations

import argparse

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def ab():
    return load_benchmark("ablate_sat_training")


def _args(**kw):
    return argparse.Namespace(**{"data": "D.jsonl", "heldout": "H.jsonl", "work_dir": "/w", "tokens": 40000,
                                 "parallel": 2, "decode_prompts": 16, "decode_max_tokens": 128, **kw})


def test_steps_follow_the_token_budget_and_the_rows_own_layout(ab):
    # batch 4 x (seq 256 + 24 blocks x K SATs): K=5 -> 1504 tokens a step, K=3 -> 1312
    assert ab.train_command("cold-sd", _args())[-1] == str(round(40000 / 1504))
    assert ab.train_command("cold-k3", _args())[-1] == str(round(40000 / 1312))
    assert ab.train_command("blocks64", _args())[-1] == str(round(40000 / (4 * (256 + 64 * 5))))
    assert ab.train_command("shipped", _args())[-1] == "1"  # its own --steps wins


def test_row_flags_override_the_shared_ones_and_gated_is_a_row(ab):
    cmd = ab.train_command("cold-gated", _args())
    assert cmd[cmd.index("--output-dir") + 1] == "/w/cold-gated"
    # argparse keeps the last occurrence: the row's --mode follows the shared one
    modes = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--mode"]
    assert modes[-1] == "gated"
    assert "D.jsonl" in cmd and cmd[cmd.index("--heldout-sources") + 1] == "H.jsonl"
    assert "--no-export" in cmd  # training rows never export; --decode re-runs without it


def test_markdown_has_decode_columns_only_when_decoded(ab):
    base = {"row": "cold-sd", "group": "cold", "steps": 27, "tokens_per_s": 33.0, "sat_targets_per_s": 11.0,
            "heldout_agree": [0.3, 0.2], "heldout_acc": [0.25, 0.15]}
    plain = ab.markdown([base], _args())
    assert "tau" not in plain and "| cold-sd | cold | 27 | 33 | 11 | 0.300 0.200 | 0.250 0.150 |" in plain
    decoded = dict(base, decode={"mean_acceptance_length": 1.234, "real_draft_acceptance_rate_per_pos": [0.5, 0.25]})
    table = ab.markdown([base, decoded], _args())
    assert "tau | real-draft acceptance per position |" in table
    assert "| 1.23 | 0.500 0.250 |" in table
    assert "16 HumanEval prompts" in table
