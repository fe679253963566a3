"""The engine on a gated SDSAT model: greedy output is the BASE model's plain decoding (no adapter at
all), token for token, fp32, in every mode, while its SATs (LoRA on SAT rows only) draft well; the
gate is what keeps it exact; a gated model loaded without its gate is refused. The sampling test is in
test_decoding_distribution.py."""

import pytest
import torch

from sdsat_vllm.decoding.generator import MODES, SPECULATIVE_MODES, SDSATGenerator
from sdsat_vllm.training.data import TokenRows
from sdsat_vllm.training.export import export_run
from sdsat_vllm.training.gated import SATGate, base_tensor_digests
from sdsat_vllm.training.sat_setup import add_sat_tokens
from sdsat_vllm.training.trainer import TrainConfig, batch_for, lr_factor, make_trainable, sat_forward_loss
from tiny_models import make_tiny_model

K = 4
PROMPT_LEN, ROW_LEN, NEW = 8, 64, 40


def base_model():
    """The base: a tiny random Llama with peaked logits (so its own continuations are learnable)."""
    return make_tiny_model(initializer_range=0.2)


@pytest.fixture(scope="module")
def tiny_gated(tmp_path_factory):
    """(base generator, gated generator, prompts): a tiny gated model whose SATs learnt the base's own
    greedy continuations of 4 random prompts (self-distilled, ~150 steps), exported and loaded back
    through SDSATGenerator.from_pretrained."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("tiny_gated")
        base, tok = base_model()
        base_gen = SDSATGenerator(base, tok)
        g = torch.Generator().manual_seed(0)
        rows = []
        for _ in range(4):
            prompt = torch.randint(2, 380, (PROMPT_LEN,), generator=g).tolist()
            rows.append(prompt + base_gen.generate(prompt, mode="ar", max_new_tokens=ROW_LEN - PROMPT_LEN,
                                                   ignore_eos=True).token_ids)
        rows = TokenRows.unbroken(torch.tensor(rows))  # [4, ROW_LEN] the base's own greedy text

        model, mtok = base_model()
        digests = base_tensor_digests(model, torch.float32)
        sdsat = add_sat_tokens(model, mtok, K, train_mode="gated")
        cfg = TrainConfig(model="tiny", output_dir=str(out), mode="gated", num_sat=K, blocks_per_seq=12,
                          batch_size=4, steps=150, dtype="fp32", lr=1e-2, sat_lr=1e-2, warmup_steps=5, lora_r=8,
                          lora_alpha=16)
        torch.manual_seed(0)
        model, groups = make_trainable(model, sdsat, cfg)
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
        for step in range(cfg.steps):
            for group, lr in zip(opt.param_groups, (cfg.sat_lr, cfg.lr)):
                group["lr"] = lr * lr_factor(step, cfg)
            loss, _ = sat_forward_loss(model, batch_for(step, 0, rows, sdsat, cfg), cfg)
            loss.backward()
            opt.step()
            opt.zero_grad()
        export_run(model, mtok, sdsat, cfg, out, torch.float32, base_tensors=digests)
        gated_gen = SDSATGenerator.from_pretrained(str(out / "model"))
        return base_gen, gated_gen, [r[:PROMPT_LEN] for r in rows.ids.tolist()], out
    finally:
        torch.set_num_threads(before)


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
