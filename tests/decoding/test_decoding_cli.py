"""`sdsat generate` and benchmarks/bench_engine.py on a tiny model directory."""

import json
import sys
from pathlib import Path

import pytest

from decoding_helpers import tiny_sdsat
from sdsat_vllm.cli import main
from sdsat_vllm.decoding import cli as decoding_cli
from sdsat_vllm.decoding.generator import MODES
from tiny_models import save_model_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tok, _ = tiny_sdsat("llama", 3)
    return str(save_model_dir(model, tok, tmp_path_factory.mktemp("tiny_sdsat") / "model"))


def test_cli_modes_in_sync_with_the_engine():
    assert decoding_cli.MODES == MODES


def test_generate_json_with_compare_ar(model_dir, capsys):
    rc = main(["generate", model_dir, "--prompt", "def add(a, b):", "--mode", "tree", "--max-new-tokens", "8",
               "--ignore-eos", "--compare-ar", "--json", "--device", "cpu"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["token_ids"]) == 8 and doc["same_as_ar"] is True
    assert doc["metrics"]["mode"] == "tree" and doc["ar_metrics"]["tokens_per_forward"] == 1.0 and doc["speedup"] > 0


def test_generate_text_and_topk_tree_shape(model_dir, capsys):
    rc = main(["generate", model_dir, "--prompt", "x = ", "--mode", "topk_tree", "--tree-shape", "2,1",
               "--max-new-tokens", "4", "--temperature", "0.8", "--seed", "1", "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "topk_tree: tau" in err and "finish=" in err


def test_generate_bad_input_exit_code(model_dir, capsys):
    rc = main(["generate", model_dir, "--prompt", "x", "--num-sat", "9", "--device", "cpu"])
    assert rc == 2
    assert "trained with K=3 SATs (use 1..3)" in capsys.readouterr().err


def test_bench_engine_smoke(model_dir, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_engine
    finally:
        sys.path.pop(0)
    rc = bench_engine.main([model_dir, "--num-prompts", "1", "--max-new-tokens", "6", "--modes", "fused", "tree",
                            "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "speedup" in out and "HumanEval/0" in out
