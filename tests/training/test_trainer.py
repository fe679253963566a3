"""The SAT trainer on tiny models: learning, frozen-mode exactness, export/adapter round trip, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sdsat_vllm.config import SDSATConfig
from sdsat_vllm.training.data import DataConfig
from sdsat_vllm.training.export import apply_adapter
from sdsat_vllm.training.sat_setup import add_sat_tokens
from sdsat_vllm.training.trainer import TrainConfig, train
from tiny_models import make_tiny_model, save_model_dir


def tiny_cfg(out, corpus, **kw):
    base = dict(model="tiny", output_dir=str(out), mode="lora", num_sat=3, blocks_per_seq=6, batch_size=4, steps=6,
                dtype="fp32", lr=5e-3, sat_lr=1e-2, warmup_steps=1, eval_every=1000, eval_batches=1, log_every=1,
                save_every=1000, lora_r=4, data=DataConfig(sources=corpus[:1], heldout_sources=corpus[1:], seq_len=48))
    base.update(kw)
    return TrainConfig(**base)


def read_log(out):
    return [json.loads(line) for line in open(out / "log.jsonl")]


def logits_of(model_dir, ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(input_ids=ids).logits


@pytest.mark.parametrize("mode", ["lora", "full", "gated"])
def test_a_few_steps_lower_the_held_out_sat_loss(tmp_path, corpus, mode):
    # A wider init than the default 0.02: a frozen lm_head that small cannot move the logits far.
    model, tok = make_tiny_model(initializer_range=0.2)
    cfg = tiny_cfg(tmp_path / "run", corpus, mode=mode, steps=20, eval_every=1, eval_batches=1, export=False,
                   lr=2e-2, lora_r=8)
    train(cfg, model=model, tokenizer=tok)
    evals = [r["eval"]["sat_loss"] for r in read_log(tmp_path / "run")]
    assert len(evals) == 20
    assert evals[-1] < evals[0] - 0.2, evals


@pytest.mark.parametrize("tied", [False, True])
def test_frozen_mode_keeps_standard_logits_bit_identical(tmp_path, corpus, tied):
    model, tok = make_tiny_model(tie_word_embeddings=tied)
    reference, ref_tok = make_tiny_model(tie_word_embeddings=tied)
    sdsat = add_sat_tokens(reference, ref_tok, 3)
    train(tiny_cfg(tmp_path / "run", corpus, mode="frozen", steps=5), model=model, tokenizer=tok)
    out = tmp_path / "run" / "model"
    assert SDSATConfig.from_pretrained(out).sat_token_ids == sdsat.sat_token_ids
    ids = torch.randint(0, 380, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(input_ids=ids).logits
    got = logits_of(out, ids)
    keep = [i for i in range(got.shape[-1]) if i not in sdsat.sat_id_set]  # SAT columns are masked at decode time
    assert torch.equal(got[..., keep], want[..., keep])
    sat_row = lambda d: load_file(d / "model.safetensors")["model.embed_tokens.weight"][sdsat.sat_token_ids[0]]
    base_dir = save_model_dir(reference, ref_tok, tmp_path / "reference")
    assert not torch.equal(sat_row(out), sat_row(base_dir)), "the SAT embedding row should have trained"


def test_export_and_adapter_round_trip(tmp_path, corpus):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    train(tiny_cfg(tmp_path / "run", corpus, model=str(base_dir), steps=4), model=model, tokenizer=tok)
    run = tmp_path / "run"
    ids = torch.randint(0, 380, (1, 20), generator=torch.Generator().manual_seed(0))
    exported = logits_of(run / "model", ids)

    # The exported (merged) model equals the base with the adapter applied unmerged, through peft.
    base, btok = make_tiny_model()
    add_sat_tokens(base, btok, 3)
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(base, run / "adapter").eval()(input_ids=ids).logits
    torch.testing.assert_close(exported, unmerged, rtol=1e-5, atol=1e-5)

    # apply-adapter rebuilds the very same files from the base directory and the small adapter.
    rebuilt = apply_adapter(str(base_dir), run / "adapter", tmp_path / "rebuilt")
    a, b = load_file(run / "model" / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert SDSATConfig.from_pretrained(rebuilt) == SDSATConfig.from_pretrained(run / "model")
    assert AutoModelForCausalLM.from_pretrained(rebuilt) is not None
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in adapter), "only LoRA and SAT rows ship"


def test_resume_continues_the_same_run(tmp_path, corpus):
    straight = tiny_cfg(tmp_path / "straight", corpus, steps=6, export=False)
    m, t = make_tiny_model()
    train(straight, model=m, tokenizer=t)

    interrupted = tiny_cfg(tmp_path / "interrupted", corpus, steps=6, export=False, max_minutes=0.0)
    m, t = make_tiny_model()
    train(interrupted, model=m, tokenizer=t)  # stops (and checkpoints) after its first step
    assert json.loads((tmp_path / "interrupted" / "checkpoint" / "state.json").read_text())["step"] == 1
    m, t = make_tiny_model()
    train(tiny_cfg(tmp_path / "interrupted", corpus, steps=6, export=False), model=m, tokenizer=t)

    a = load_file(tmp_path / "straight" / "checkpoint" / "trainable.safetensors")
    b = load_file(tmp_path / "interrupted" / "checkpoint" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_log(tmp_path / "interrupted")] == [1, 2, 3, 4, 5, 6]


def test_resume_a_run_saved_before_a_config_field_existed(tmp_path, corpus):
    m, t = make_tiny_model()
    train(tiny_cfg(tmp_path / "run", corpus, steps=2, export=False, max_minutes=0.0), model=m, tokenizer=t)
    saved_path = tmp_path / "run" / "train_config.json"
    saved = json.loads(saved_path.read_text())
    del saved["data"]["shuffle_seed"]  # as written by a version without that field (default 0)
    saved_path.write_text(json.dumps(saved))
    m, t = make_tiny_model()
    train(tiny_cfg(tmp_path / "run", corpus, steps=2, export=False), model=m, tokenizer=t)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2]


def test_resume_refuses_a_different_config(tmp_path, corpus):
    m, t = make_tiny_model()
    train(tiny_cfg(tmp_path / "run", corpus, steps=2, export=False), model=m, tokenizer=t)
    m, t = make_tiny_model()
    with pytest.raises(ValueError, match="different config.*lr"):
        train(tiny_cfg(tmp_path / "run", corpus, steps=4, lr=1e-4, export=False), model=m, tokenizer=t)


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(model="x", output_dir=str(tmp_path), mode="bogus")
    with pytest.raises(ValueError, match="HumanEval"):
        DataConfig(sources=("/somewhere/human_eval/data/HumanEval.jsonl",))
    with pytest.raises(ValueError, match="too short"):
        TrainConfig(model="x", output_dir=str(tmp_path), num_sat=8, data=DataConfig(seq_len=8))
    with pytest.raises(ValueError, match="eval_every must be >= 1"):  # was a ZeroDivisionError mid-run
        TrainConfig(model="x", output_dir=str(tmp_path), eval_every=0)
    with pytest.raises(ValueError, match="std_target must be data or base"):
        TrainConfig(model="x", output_dir=str(tmp_path), std_target="teacher")
    for mode in ("full", "frozen", "gated"):
        with pytest.raises(ValueError, match=f"std_target base needs mode lora.*{mode}"):
            TrainConfig(model="x", output_dir=str(tmp_path), mode=mode, std_target="base")


def _batch_with_sats(L=4, sat_id=7):
    """A one-row SATBatch-like object: L standard tokens, then one SAT, labels everywhere but the last."""
    from sdsat_vllm.training.layout import IGNORE_INDEX, SATBatch

    ids = torch.tensor([[1, 2, 3, 4][:L] + [sat_id]])
    labels = torch.tensor([[2, 3, 4, IGNORE_INDEX][:L] + [5]])
    n = ids.shape[1]
    return SATBatch(ids, torch.arange(n)[None], torch.ones(1, n, n, dtype=torch.bool).tril(), labels,
                    torch.tensor([0] * L + [1]), torch.tensor([[0]]), L)


def test_kl_from_base_by_hand():
    from sdsat_vllm.training.trainer import kl_from_base

    batch = _batch_with_sats()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 8, generator=g)
    # the SAT column (id 7) never counts: a model that differs from the base only there is the base
    same_but_sat = base.clone()
    same_but_sat[..., 7] += 5.0
    assert kl_from_base(same_but_sat, base.clone(), batch).item() == pytest.approx(0.0, abs=1e-6)
    model = torch.randn(1, 4, 8, generator=g)
    p = base[..., :7].softmax(-1)
    q = model[..., :7].softmax(-1)
    per_pos = (p * (p.log() - q.log())).sum(-1)[0]
    want = per_pos[:3].mean()  # position 3 has no label (a document boundary): left out
    base_masked = base.clone()
    base_masked[..., 7] = float("-inf")  # as standard_logits_of_base returns it
    assert kl_from_base(model, base_masked, batch).item() == pytest.approx(want.item(), rel=1e-5)


def test_std_target_base_keeps_the_answers_of_the_base_model(tmp_path, corpus):
    """std_target "base" (KL from the base at every standard position) keeps the trained model's
    next-token distribution the base model's; "data" (CE on the corpus), the negative control, moves it."""
    import torch.nn.functional as F

    drift, agree = {}, {}
    for target in ("data", "base"):
        model, tok = make_tiny_model(initializer_range=0.2)
        reference, ref_tok = make_tiny_model(initializer_range=0.2)
        add_sat_tokens(reference, ref_tok, 3)
        run = tmp_path / target
        train(tiny_cfg(run, corpus, steps=20, lr=5e-3, lora_r=8, eval_every=1, std_target=target),
              model=model, tokenizer=tok)
        ids = torch.tensor([ref_tok(open(corpus[1]).read()).input_ids[:64]])  # held-out text
        with torch.no_grad():
            want = reference(input_ids=ids).logits[..., :380].log_softmax(-1)
        got = logits_of(run / "model", ids)[..., :380].log_softmax(-1)
        drift[target] = F.kl_div(got.flatten(0, 1), want.flatten(0, 1), log_target=True, reduction="batchmean").item()
        log = read_log(run)
        agree[target] = log[-1]["eval"]["std_agree_base"]
        evals = [r["eval"]["sat_loss"] for r in log]
        assert evals[-1] < evals[0] - 0.2, (target, evals)  # the SATs learn either way
    assert drift["data"] > 0.5, drift  # 0.78 when written
    assert drift["base"] < drift["data"] / 5, drift  # 0.10
    assert agree["base"] > agree["data"] + 0.2, agree  # .62 against .25
