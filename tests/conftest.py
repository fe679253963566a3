import sys
from pathlib import Path

import pytest

# tests/tiny_models.py is a helper module, importable from every test file.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_trained_sdsat_dir(tmp_path_factory):
    """HF directory of a tiny Llama trained with K=4 SATs so that its drafts get accepted."""
    from tiny_models import train_tiny_sdsat

    return train_tiny_sdsat(tmp_path_factory.mktemp("tiny_trained_sdsat"))


@pytest.fixture(scope="session")
def tiny_trained_sdsat(tiny_trained_sdsat_dir):
    """(model, tokenizer, sdsat_config) of the tiny trained model, fp32, eval mode.
    Prompts taken from tiny_models.tiny_training_passage() get accepted drafts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdsat_vllm.config import SDSATConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_trained_sdsat_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_trained_sdsat_dir)
    return model, tokenizer, SDSATConfig.from_pretrained(tiny_trained_sdsat_dir)
