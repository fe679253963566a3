"""Shared pieces of the vLLM plugin tests: tiny model dirs, engine settings, the request cases."""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
from pathlib import Path

from sdsat_vllm.vllm_plugin import shutdown_llm
from tiny_models import tiny_training_passage as passage  # the text the trained fixture memorised

VLLM_AVAILABLE = importlib.util.find_spec("vllm") is not None

# tiny models, fp32, CPU: small KV space, low memory fraction, no compilation
ENGINE_KW = dict(max_model_len=512, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float32",
                 disable_log_stats=False, seed=0)
N_DRAFTS = 4  # the trained fixture has K=4


def mixed_prompts() -> list[tuple[str, int]]:
    """8 (prompt, max_tokens) pairs of different lengths: requests start together and finish apart."""
    p = passage()
    starts = [0, 37, 90, 150, 233, 300, 410, 520]
    lengths = [60, 12, 140, 35, 80, 5, 100, 50]
    max_tokens = [48, 96, 8, 64, 24, 80, 40, 16]
    return [(p[s:s + n], m) for s, n, m in zip(starts, lengths, max_tokens)]


def baseline_single_cases(p: str, sat: int):
    """(name, prompt, greedy SamplingParams kwargs): run alone, with and without SDSAT."""
    tok_prompt = {"prompt_token_ids": [5, 17, sat, sat, 42, 200, 222]}
    long_ids = {"prompt_token_ids": [200 + (i % 50) for i in range(500)]}
    return [
        ("sat_text", p[:40] + "<|sdsat_sat|>" + p[40:80], dict(max_tokens=24)),
        ("sat_ids", tok_prompt, dict(max_tokens=24)),
        ("near_max_len", long_ids, dict(max_tokens=64)),  # runs into max_model_len=512
        ("logprobs", p[100:160], dict(max_tokens=16, logprobs=3)),
    ]


def make_tiny_sdsat_dir(path, num_sat: int = 3, seed: int = 0) -> Path:
    from tiny_models import make_tiny_model, save_model_dir

    from sdsat_vllm.training.sat_setup import add_sat_tokens

    model, tok = make_tiny_model(seed=seed)
    add_sat_tokens(model, tok, num_sat=num_sat)
    return save_model_dir(model, tok, path)


def make_tiny_plain_dir(path, seed: int = 0) -> Path:
    from tiny_models import make_tiny_model, save_model_dir

    model, tok = make_tiny_model(seed=seed)
    return save_model_dir(model, tok, path)


def shutdown(llm) -> None:
    """Stop an LLM's engine processes now (tests start several engines in one session)."""
    shutdown_llm(llm)
    gc.collect()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env
