"""The engine on a gated SDSAT model: greedy output is the BASE model's plain decoding (no adapter at
all), token for token, fp32, in every mode, while its SATs (LoRA on SAT rows only) draft well; the
gate is what keeps it exact; a gated model loaded without its gate is refused. The sampling test is in
test_decoding_distribution.py."""

import pytest
import torch

from sdsat_vllm.decoding.generator import MODES, SPECULATIVE_MODES, SDSATGenerator
from sdsat_vllm.training.gated import SATGate
from tiny_models import GATED_K

K, NEW = GATED_K, 40


@pytest.fixture(scope="module")
def tiny_gated(tiny_gated_dirs):
    """(base generator, gated generator, prompts, run dir): the tiny gated model of
    tiny_models.train_tiny_gated, loaded back through SDSATGenerator.from_pretrained."""
    d = tiny_gated_dirs
    return (SDSATGenerator.from_pretrained(str(d["base_dir"])), SDSATGenerator.from_pretrained(str(d["gated_dir"])),
            d["prompts"], d["run"])


def test_greedy_is_the_base_models_plain_decoding_in_every_mode(tiny_gated):
    base_gen, gen, prompts, _ = tiny_gated
    assert base_gen.sdsat is None and gen.sdsat.train_mode == "gated"
    accepted = drafted = 0
    for prompt in prompts:
        ref = base_gen.generate(prompt, mode="ar", max_new_tokens=NEW, ignore_eos=True)  # no adapter, no SATs
        for mode in MODES:
            for k in (1, K) if mode != "ar" else (None,):
                out = gen.generate(prompt, mode=mode, num_sat=k, max_new_tokens=NEW, ignore_eos=True)
                assert out.token_ids == ref.token_ids, f"{mode} k={k}"
                if mode == "tree" and k == K:
                    accepted += out.metrics.num_accepted_tokens
                    drafted += out.metrics.num_draft_tokens
    # the SATs are not trivial: their drafts are mostly accepted (they learnt the base's continuations)
    assert accepted > 0.5 * drafted, (accepted, drafted)


def test_the_base_reference_is_plain_transformers_greedy_decoding(tiny_gated):
    base_gen, gen, prompts, _ = tiny_gated
    ids = torch.tensor([prompts[0]])
    hf = base_gen.model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert gen.generate(prompts[0], mode="tree", max_new_tokens=16, ignore_eos=True).token_ids == hf[0, 8:].tolist()


def test_the_gate_is_what_keeps_it_exact(tiny_gated, monkeypatch):
    """The same adapter with its delta on every row (the `lora` semantics) is no longer the base model."""
    base_gen, gen, prompts, _ = tiny_gated
    refs = [base_gen.generate(p, mode="ar", max_new_tokens=NEW, ignore_eos=True).token_ids for p in prompts]

    def every_row(self, input_ids):
        self.rows, self.all_rows = torch.ones_like(input_ids, dtype=torch.bool), True

    monkeypatch.setattr(SATGate, "set_from_input_ids", every_row)
    ungated = [gen.generate(p, mode="ar", max_new_tokens=NEW, ignore_eos=True).token_ids for p in prompts]
    assert ungated != refs


def test_sampling_is_reproducible_and_sats_never_emitted(tiny_gated):
    _, gen, prompts, _ = tiny_gated
    sat = gen.sdsat.sat_token_ids[0]
    for mode in SPECULATIVE_MODES:
        a = gen.generate(prompts[1], mode=mode, temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3)
        b = gen.generate(prompts[1], mode=mode, temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3)
        assert a.token_ids == b.token_ids and sat not in a.token_ids


def test_a_gated_model_loaded_without_its_gate_is_refused(tiny_gated):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    *_, out = tiny_gated
    plain = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    with pytest.raises(ValueError, match="loaded without its gate"):
        SDSATGenerator(plain, AutoTokenizer.from_pretrained(out / "model"))
