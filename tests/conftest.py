import sys
from pathlib import Path

import pytest
import torch

# tests/tiny_models.py is a helper module, importable from every test file.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run far faster on one intra-op thread, and on a shared 2-core machine threads
    fighting for the cores cost 10-50x. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_trained_sdsat_dir(tmp_path_factory):
    """HF directory of a tiny Llama trained with K=4 SATs so that its drafts get accepted."""
    from tiny_models import train_tiny_sdsat

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run outside the per-test thread setting
    try:
        return train_tiny_sdsat(tmp_path_factory.mktemp("tiny_trained_sdsat"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_gated_dirs(tmp_path_factory):
    """tiny_models.train_tiny_gated: dict(base_dir, gated_dir, prompts, run) of a tiny gated SDSAT
    model whose SATs draft the base's own continuations of `prompts`."""
    from tiny_models import train_tiny_gated

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny_gated(tmp_path_factory.mktemp("tiny_gated"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_trained_sdsat(tiny_trained_sdsat_dir):
    """(model, tokenizer, sdsat_config) of the tiny trained model, fp32, eval mode.
    Prompts taken from tiny_models.tiny_training_passage() get accepted drafts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdsat_vllm.config import SDSATConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_trained_sdsat_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_trained_sdsat_dir)
    return model, tokenizer, SDSATConfig.from_pretrained(tiny_trained_sdsat_dir)
