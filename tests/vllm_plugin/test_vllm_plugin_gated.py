"""A gated SDSAT model through vLLM (issue 9, point 4): the output is the BASE model's plain vLLM
decoding (no LoRA, no SDSAT), token for token, while the SATs, which alone get the adapter's LoRA
delta, draft well. Two gates: `rows` (sat_row_lora.py: hooks in vLLM's layers, LoRA off; the default
here, a CPU at TP 1; eager and compiled) and `lora` (vLLM's LoRA layers: patches gated_enable_lora,
gated_lora_mapping, cpu_lora_no_lora_rows; the default at TP 2 and on GPUs).

The tiny gated model (tests/tiny_models.py, train_tiny_gated) learnt the base's own greedy
continuations of four prompts: with its delta the SATs' drafts are nearly all accepted there; without
it they would be noise (the negative control below turns the gate off inside the engine)."""

import pytest
from vllm_plugin_helpers import ENGINE_KW, VLLM_AVAILABLE, sampling_distribution_check, shutdown, tp2_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]

N_DRAFTS, NEW = 4, 40
FIXED = {"model": "sdsat", "num_speculative_tokens": N_DRAFTS, "sdsat_policy": "fixed"}


def prompts8(d) -> list[list[int]]:
    """The 4 trained prompts and 4 others (the same ids shifted): a batch of 8 of mixed difficulty."""
    return d["prompts"] + [[(t * 7 + 3) % 380 + 2 for t in p] for p in d["prompts"]]


def tokens(llm, prompts, **kw) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sp = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True, **kw)
    return [list(r.outputs[0].token_ids) for r in llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp)]


@pytest.fixture(scope="module")
def base_outputs(tiny_gated_dirs):
    """Plain vLLM on the base model alone (no SATs in its vocabulary, no LoRA, no SDSAT)."""
    from vllm import LLM

    llm = LLM(model=str(tiny_gated_dirs["base_dir"]), **ENGINE_KW)
    try:
        return tokens(llm, prompts8(tiny_gated_dirs))
    finally:
        shutdown(llm)


@pytest.fixture(scope="module")
def gated_llm(tiny_gated_dirs, base_outputs):  # the baseline first: one engine alive at a time
    from vllm import LLM

    llm = LLM(model=str(tiny_gated_dirs["gated_dir"]), speculative_config=FIXED, **ENGINE_KW)
    yield llm
    shutdown(llm)


def test_greedy_is_the_base_models_plain_vllm_decoding_batch_1_and_8(gated_llm, tiny_gated_dirs, base_outputs):
    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

    d = tiny_gated_dirs
    assert gated_llm.llm_engine.vllm_config.lora_config is None  # CPU, TP 1: the rows gate, LoRA stays off
    before = from_llm_metrics(gated_llm.get_metrics(), draft_len=N_DRAFTS)
    one_by_one = [tokens(gated_llm, [p])[0] for p in d["prompts"]]
    trained = from_llm_metrics(gated_llm.get_metrics(), draft_len=N_DRAFTS) - before
    assert one_by_one == base_outputs[:4]
    assert tokens(gated_llm, prompts8(d)) == base_outputs  # batch 8: gated and ungated rows side by side
    sat = SDSATConfig.from_pretrained(d["gated_dir"]).sat_id_set
    assert not sat & {t for out in base_outputs for t in out}
    # the SATs carry their delta: on the trained prompts nearly every real draft is accepted
    assert trained.num_draft_tokens > 0 and trained.acceptance_rate > 0.8, trained.describe()


def test_sampling_has_the_base_models_distribution(gated_llm, tiny_gated_dirs):
    d = tiny_gated_dirs
    # the tiny base is flat at temperature 2 (top p 0.02); at 0.5 its second token's top p is ~0.33
    sampling_distribution_check(gated_llm, d["gated_dir"], prompt_ids=d["prompts"][0], reference_dir=d["base_dir"],
                                temperature=0.5)


def test_a_user_lora_request_is_refused_clearly(gated_llm, tiny_gated_dirs, base_outputs):
    from vllm.lora.request import LoRARequest

    from sdsat_vllm.config import GATED_VLLM_LORA_DIR

    lora = LoRARequest("mine", 1, str(tiny_gated_dirs["gated_dir"] / GATED_VLLM_LORA_DIR))
    with pytest.raises(Exception, match="gated SDSAT model.*user LoRA adapters cannot be combined"):
        gated_llm.generate([{"prompt_token_ids": tiny_gated_dirs["prompts"][0]}], lora_request=lora)
    assert tokens(gated_llm, tiny_gated_dirs["prompts"][:1]) == base_outputs[:1]  # and it keeps serving


@pytest.mark.parametrize("gate", ["rows", "lora"])
def test_negative_control_without_the_gate_the_output_is_not_the_base_models(tiny_gated_dirs, base_outputs,
                                                                             gated_llm, monkeypatch, gate):
    """The same engine setup with the adapter on every token (the `lora` semantics; in-process engine
    so that the test can swap the gate's token test): the output leaves the base model's, so the
    identity above is the gate's doing, not an adapter too weak to matter."""
    import numpy as np
    import torch
    from vllm import LLM

    from sdsat_vllm.vllm_plugin import patches, sat_row_lora

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(patches, "gated_token_mapping",
                        lambda ids, sat_ids, lora_id: tuple(np.full(len(ids), lora_id).tolist()))
    monkeypatch.setattr(sat_row_lora, "sat_row_mask", lambda ids, sat_ids: torch.ones_like(ids, dtype=torch.bool))
    shutdown(gated_llm)  # one engine at a time on a 2-core machine; the module's tests above are done
    llm = LLM(model=str(tiny_gated_dirs["gated_dir"]), speculative_config={**FIXED, "sdsat_gate": gate}, **ENGINE_KW)
    try:
        assert tokens(llm, tiny_gated_dirs["prompts"]) != base_outputs[:4]
    finally:
        shutdown(llm)


@pytest.mark.parametrize("gate, engine", [("lora", {}), ("rows", {"enforce_eager": False})],
                         ids=["lora-gate", "rows-gate-compiled"])
def test_the_other_gate_and_a_compiled_model_give_the_base_models_output(tiny_gated_dirs, base_outputs, gated_llm,
                                                                        gate, engine):
    """The `lora` gate at TP 1 (vLLM's LoRA layers, LoRA turned on by the plugin), and the `rows` gate in
    a compiled model (vLLM's default; the mask buffer is the compiled graph's input, written each step):
    the base model's output at batch 1 and 8, the SATs' drafts nearly all accepted on the trained prompts."""
    from vllm import LLM

    from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

    shutdown(gated_llm)
    llm = LLM(model=str(tiny_gated_dirs["gated_dir"]), speculative_config={**FIXED, "sdsat_gate": gate},
              **{**ENGINE_KW, **engine})
    try:
        assert (llm.llm_engine.vllm_config.lora_config is not None) == (gate == "lora")
        before = from_llm_metrics(llm.get_metrics(), draft_len=N_DRAFTS)
        assert [tokens(llm, [p])[0] for p in tiny_gated_dirs["prompts"]] == base_outputs[:4]
        trained = from_llm_metrics(llm.get_metrics(), draft_len=N_DRAFTS) - before
        assert tokens(llm, prompts8(tiny_gated_dirs)) == base_outputs
        assert trained.num_draft_tokens > 0 and trained.acceptance_rate > 0.8, trained.describe()
    finally:
        shutdown(llm)


def test_tp2_greedy_is_the_base_models(tiny_gated_dirs, base_outputs, gated_llm, monkeypatch):
    """TP=2 (the gate `auto` takes `lora` there): vLLM's LoRA layers shard the deltas with the weights
    (column- and row-parallel); the gate maps the same tokens on both ranks."""
    from vllm import LLM

    for k, v in tp2_env().items():
        monkeypatch.setenv(k, v)
    shutdown(gated_llm)
    llm = LLM(model=str(tiny_gated_dirs["gated_dir"]), tensor_parallel_size=2, distributed_executor_backend="mp",
              speculative_config=FIXED, **ENGINE_KW)
    try:
        assert tokens(llm, prompts8(tiny_gated_dirs)) == base_outputs
    finally:
        shutdown(llm)
