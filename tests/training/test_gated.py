"""The `gated` train mode: LoRA deltas on SAT rows only, so standard tokens see exactly the base weights.

Training: standard-token logits bit-identical to the base model's (tiny random models, tied and untied;
the real SmolLM2 in the slow test) before and after training steps, SAT rows changed, the held-out SAT
loss lowered (test_trainer's learning test), resume. Export: an adapter in the `lora` layout and a
served directory whose base tensors are the base's unchanged (sha256 recorded and checked), never a
merged model; apply-adapter and `sdsat fetch` rebuild it bit for bit; the loaded model gives the
trained SAT logits."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sdsat_vllm.config import SDSATConfig
from sdsat_vllm.training.data import DataConfig
from sdsat_vllm.training.export import apply_adapter, export_run
from sdsat_vllm.training.gated import (
    GATED_ADAPTER_DIR,
    GatedLoRALinear,
    base_tensor_digests,
    check_base_tensors,
    gate_of,
    load_gated_dir,
    load_gated_model,
)
from sdsat_vllm.training.layout import build_sat_batch, sample_insertion_points
from sdsat_vllm.training.sat_setup import add_sat_tokens
from sdsat_vllm.training.trainer import TrainConfig, make_trainable, sat_forward_loss, train
from tiny_models import make_tiny_model, save_model_dir, tiny_training_passage

K = 3


def gated_cfg(out, corpus=None, **kw):
    base = dict(model="tiny", output_dir=str(out), mode="gated", num_sat=K, blocks_per_seq=6, batch_size=4, steps=4,
                dtype="fp32", lr=2e-2, sat_lr=2e-2, warmup_steps=1, eval_every=1000, eval_batches=1, log_every=1,
                save_every=1000, lora_r=4, lora_alpha=8)
    if corpus:
        base["data"] = DataConfig(sources=corpus[:1], heldout_sources=corpus[1:], seq_len=48)
    base.update(kw)
    return TrainConfig(**base)


def sat_layout(sdsat, seed=0, batch=2, length=40, blocks=4):
    ids = torch.randint(2, 380, (batch, length), generator=torch.Generator().manual_seed(seed))
    pts = sample_insertion_points(batch, length, blocks, sdsat.num_sat, torch.Generator().manual_seed(seed + 1))
    return ids, build_sat_batch(ids, pts, sdsat.sat_token_ids)


def layout_logits(model, b):
    with torch.no_grad():
        return model(input_ids=b.input_ids, position_ids=b.position_ids,
                     attention_mask=b.additive_mask(torch.float32)).logits


def train_steps(model, sdsat, cfg, groups, steps, seed=0):
    opt = torch.optim.AdamW(groups)
    for s in range(steps):
        _, b = sat_layout(sdsat, seed=100 + seed + s, batch=4)
        loss, _ = sat_forward_loss(model, b, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("tied", [False, True])
def test_standard_logits_are_the_base_models_bit_for_bit(tmp_path, tied):
    base, _ = make_tiny_model(tie_word_embeddings=tied, initializer_range=0.2)  # no SATs at all
    untrained, utok = make_tiny_model(tie_word_embeddings=tied, initializer_range=0.2)
    add_sat_tokens(untrained, utok, K)  # the SAT rows as they start, no LoRA
    model, tok = make_tiny_model(tie_word_embeddings=tied, initializer_range=0.2)
    sdsat = add_sat_tokens(model, tok, K, train_mode="gated")
    cfg = gated_cfg(tmp_path)
    model, groups = make_trainable(model, sdsat, cfg)
    V = base.config.vocab_size  # the base vocabulary; the SAT column is masked wherever SDSAT decodes
    ids, b = sat_layout(sdsat)
    L = b.num_standard
    with torch.no_grad():
        want = base(input_ids=ids).logits
    want_layout = layout_logits(untrained, b)
    for trained_steps in (0, 6):
        train_steps(model, sdsat, cfg, groups, trained_steps)
        with torch.no_grad():
            got = model(input_ids=ids).logits  # the standard pass alone, as training computes it
        assert torch.equal(got[..., :V], want), f"after {trained_steps} steps"
        got_layout = layout_logits(model, b)  # standard and SAT rows in one forward
        assert torch.equal(got_layout[:, :L, :V], want_layout[:, :L, :V]), f"after {trained_steps} steps"
    # and the SAT rows did train: their logits moved away from the untrained SATs'
    assert (got_layout[:, L:, :V] - want_layout[:, L:, :V]).abs().max() > 0.1
    lora_b = [m.lora_B.weight for m in model.modules() if isinstance(m, GatedLoRALinear)]
    assert len(lora_b) == 14 and all(w.abs().max() > 0 for w in lora_b)  # 7 linear layers x 2


def test_a_gated_layer_returns_the_base_output_on_standard_rows_even_when_the_delta_is_not_finite():
    model, tok = make_tiny_model()
    sdsat = add_sat_tokens(model, tok, K)
    from sdsat_vllm.training.gated import install_gated_lora

    install_gated_lora(model, sdsat.sat_token_ids, 4, 8)
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B.weight.fill_(float("inf"))
    ids = torch.tensor([[5, 6, 7, sdsat.sat_token_ids[0], sdsat.sat_token_ids[0]]])
    gate_of(model).set_from_input_ids(ids)
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        out = layer(x)
        assert torch.equal(out[:, :3], layer.base(x)[:, :3])  # a where, not a multiply by 0
        assert not torch.isfinite(out[:, 3:]).any()
    gate_of(model).set_from_input_ids(ids[:, :3])
    assert gate_of(model).rows is None  # no SAT: no delta computed at all
    with torch.no_grad():
        model(input_ids=ids)
    assert gate_of(model).rows is None  # the mask lives for one forward of the causal LM only
    with pytest.raises(ValueError, match="needs input_ids"):
        model(inputs_embeds=torch.randn(1, 3, 64))


def test_export_writes_an_adapter_and_the_unchanged_base_never_a_merged_model(tmp_path, corpus):
    """adapter/: the lora adapter's layout (same files, same keys) + sdsat.json saying gated, with the
    base tensors' sha256. model/: the base's tensors bit for bit + the SAT rows + the adapter beside;
    apply-adapter rebuilds it bit for bit; a changed base tensor is refused."""
    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    train(gated_cfg(tmp_path / "run", corpus, model=str(base_dir)), model=model, tokenizer=tok)
    run = tmp_path / "run"
    adapter, served = run / "adapter", run / "model"
    meta = json.loads((adapter / "sdsat.json").read_text())
    assert meta["sdsat"]["train_mode"] == "gated" and meta["gated"]["lora_r"] == 4
    assert SDSATConfig.from_pretrained(served).train_mode == "gated"

    m2, t2 = make_tiny_model()
    train(gated_cfg(tmp_path / "lora", corpus, mode="lora", steps=1, model=str(base_dir)), model=m2, tokenizer=t2)
    lora = load_file(tmp_path / "lora" / "adapter" / "adapter_model.safetensors")
    gated = load_file(adapter / "adapter_model.safetensors")
    assert {k: v.shape for k, v in gated.items()} == {k: v.shape for k, v in lora.items()}
    lora_cfg = json.loads((tmp_path / "lora" / "adapter" / "adapter_config.json").read_text())
    gated_cfg_json = json.loads((adapter / "adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "trainable_token_indices", "base_model_name_or_path"):
        assert gated_cfg_json[key] == lora_cfg[key], key
    assert sorted(gated_cfg_json["target_modules"]) == sorted(lora_cfg["target_modules"])

    base_w, served_w = load_file(base_dir / "model.safetensors"), load_file(served / "model.safetensors")
    assert base_w.keys() == served_w.keys()
    for k, t in base_w.items():  # nothing merged: the base's tensors, the SAT rows appended to the vocabulary
        assert torch.equal(served_w[k][: t.shape[0]], t), k
    sat = sorted(SDSATConfig.from_pretrained(served).sat_id_set)
    emb = served_w["model.embed_tokens.weight"]
    assert torch.equal(emb[sat], gated["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"])
    assert (served / GATED_ADAPTER_DIR / "adapter_model.safetensors").read_bytes() == \
        (adapter / "adapter_model.safetensors").read_bytes()
    check_base_tensors(served)

    rebuilt = apply_adapter(str(base_dir), adapter, tmp_path / "rebuilt")
    again = load_file(rebuilt / "model.safetensors")
    assert again.keys() == served_w.keys() and all(torch.equal(again[k], served_w[k]) for k in again)
    assert SDSATConfig.from_pretrained(rebuilt) == SDSATConfig.from_pretrained(served)

    tampered, ttok = make_tiny_model()
    with torch.no_grad():
        tampered.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    tampered_dir = save_model_dir(tampered, ttok, tmp_path / "tampered")
    with pytest.raises(ValueError, match=r"not the ones the gated adapter was trained on.*down_proj"):
        apply_adapter(str(tampered_dir), adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    served_w["model.layers.0.self_attn.q_proj.weight"][0, 0] += 1.0
    from safetensors.torch import save_file

    save_file(served_w, served / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="q_proj.weight differs"):
        check_base_tensors(served)


@pytest.mark.parametrize("tied", [False, True])
def test_the_loaded_adapter_gives_the_trained_models_logits(tmp_path, tied):
    """load_gated_model(base, adapter) and the served directory compute what the trained model computed."""
    model, tok = make_tiny_model(tie_word_embeddings=tied, initializer_range=0.2)
    digests = base_tensor_digests(model, torch.float32)
    sdsat = add_sat_tokens(model, tok, K, train_mode="gated")
    cfg = gated_cfg(tmp_path / "run")
    model, groups = make_trainable(model, sdsat, cfg)
    train_steps(model, sdsat, cfg, groups, 5)
    _, b = sat_layout(sdsat, seed=7)
    trained = layout_logits(model, b)
    export_run(model, tok, sdsat, cfg, tmp_path / "run", torch.float32, base_tensors=digests)

    base, btok = make_tiny_model(tie_word_embeddings=tied, initializer_range=0.2)
    loaded, _, loaded_sdsat = load_gated_model(base, tmp_path / "run" / "adapter", tokenizer=btok)
    assert loaded_sdsat == sdsat and gate_of(loaded) is not None
    assert torch.equal(layout_logits(loaded, b), trained)
    served = load_gated_dir(tmp_path / "run" / "model", dtype=torch.float32).eval()
    assert torch.equal(layout_logits(served, b), trained)


def test_resume_continues_the_same_gated_run(tmp_path, corpus):
    m, t = make_tiny_model()
    train(gated_cfg(tmp_path / "straight", corpus, steps=4, export=False), model=m, tokenizer=t)
    m, t = make_tiny_model()
    train(gated_cfg(tmp_path / "interrupted", corpus, steps=4, export=False, max_minutes=0.0), model=m, tokenizer=t)
    m, t = make_tiny_model()
    train(gated_cfg(tmp_path / "interrupted", corpus, steps=4, export=False), model=m, tokenizer=t)
    a = load_file(tmp_path / "straight" / "checkpoint" / "trainable.safetensors")
    b = load_file(tmp_path / "interrupted" / "checkpoint" / "trainable.safetensors")
    assert any(".lora_A." in k for k in a) and any("trainable_tokens" in k for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_a_gated_run_from_a_gated_adapter(tmp_path, corpus):
    model, tok = make_tiny_model()
    first = train(gated_cfg(tmp_path / "a", corpus, steps=3, eval_every=3), model=model, tokenizer=tok)
    last = [json.loads(line) for line in open(first / "log.jsonl")][-1]["eval"]
    model, tok = make_tiny_model()
    warm = gated_cfg(tmp_path / "b", corpus, steps=1, lr=0.0, sat_lr=0.0, eval_every=1, export=False,
                     init_adapter=str(first / "adapter"))
    train(warm, model=model, tokenizer=tok)
    got = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")][-1]["eval"]
    assert got["sat_loss"] == pytest.approx(last["sat_loss"], abs=1e-5)


def test_sdsat_fetch_builds_a_gated_model_from_base_and_adapter(tmp_path, corpus, monkeypatch):
    """A shipped gated adapter resolves (`sdsat fetch NAME`) to a directory whose standard weights are
    the base model's, checked by sha256, that the engine loads with its gate."""
    from sdsat_vllm import adapters
    from sdsat_vllm.adapters.manifest import write_manifest

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    train(gated_cfg(tmp_path / "run", corpus, model=str(base_dir), steps=2), model=model, tokenizer=tok)
    write_manifest(tmp_path / "run" / "adapter")  # what shipping an adapter includes
    spec = adapters.ShippedAdapter("tiny-gated-sdsat", str(base_dir), str(tmp_path / "run" / "adapter"))
    monkeypatch.setitem(adapters.SHIPPED, spec.name, spec)
    built = adapters.resolve_model(spec.name, cache_dir=tmp_path / "cache")
    assert built.parent == tmp_path / "cache" and built.name.startswith("tiny-gated-sdsat-")
    assert SDSATConfig.from_pretrained(built).train_mode == "gated"
    check_base_tensors(built)
    a, b = load_file(built / "model.safetensors"), load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert adapters.resolve_model(spec.name, cache_dir=tmp_path / "cache") == built  # cached


@pytest.mark.slow
def test_real_smollm2_standard_logits_bit_identical_in_gated_mode(tmp_path):
    """The real default model (SmolLM2-135M, tied embeddings), fp32: the gated training model's
    standard-token logits equal the base model's bit for bit before and after training steps; the
    export (bf16, as stored) keeps every base tensor, and the engine decodes as the base model."""
    from sdsat_vllm.decoding.generator import SDSATGenerator
    from sdsat_vllm.models import resolve_model
    from sdsat_vllm.training.trainer import load_base

    base, tok, _, _, stored = load_base("smollm2-135m")
    model, tok2, *_ = load_base("smollm2-135m")
    assert stored == torch.bfloat16
    V = base.config.vocab_size
    ids = torch.tensor([tok(tiny_training_passage()).input_ids[:96]])
    with torch.no_grad():
        want = base(input_ids=ids).logits
    digests = base_tensor_digests(model, stored)
    sdsat = add_sat_tokens(model, tok2, 5, train_mode="gated")
    cfg = gated_cfg(tmp_path, model="smollm2-135m", num_sat=5, lora_r=16, lora_alpha=32, lr=1e-3, sat_lr=1e-3)
    model, groups = make_trainable(model, sdsat, cfg)
    opt = torch.optim.AdamW(groups)
    for step in range(4):
        with torch.no_grad():
            got = model(input_ids=ids).logits
        assert got.shape[-1] == V + 1 and torch.equal(got[..., :V], want), f"after {step} steps"
        if step == 3:
            break
        pts = sample_insertion_points(1, 96, 8, 5, torch.Generator().manual_seed(step))
        loss, _ = sat_forward_loss(model, build_sat_batch(ids, pts, sdsat.sat_token_ids), cfg)
        loss.backward()
        opt.step()
        opt.zero_grad()
    lora_b = [m.lora_B.weight for m in model.modules() if isinstance(m, GatedLoRALinear)]
    assert len(lora_b) == 30 * 7 and all(w.abs().max() > 0 for w in lora_b)

    export_run(model, tok2, sdsat, cfg, tmp_path, stored, base_tensors=digests)  # checks the base tensors
    base_w = load_file(resolve_model("smollm2-135m") / "model.safetensors")
    served_w = load_file(tmp_path / "model" / "model.safetensors")
    assert base_w.keys() == served_w.keys()
    assert all(torch.equal(served_w[k][: t.shape[0]], t) for k, t in base_w.items())
    gen = SDSATGenerator.from_pretrained(str(tmp_path / "model"))
    plain = SDSATGenerator(base, tok)
    prompt = "def fibonacci(n):\n"
    ref = plain.generate(prompt, mode="ar", max_new_tokens=16, ignore_eos=True)
    for mode in ("fused", "tree"):
        assert gen.generate(prompt, mode=mode, max_new_tokens=16, ignore_eos=True).token_ids == ref.token_ids


def test_sdsat_train_gated_and_generate_from_the_command_line(tmp_path, corpus, capsys):
    """`sdsat train --mode gated` (bf16 autocast, the default dtype) then `sdsat generate RUN/model`."""
    from sdsat_vllm.cli import main

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    rc = main(["train", "--model", str(base_dir), "--output-dir", str(tmp_path / "run"), "--mode", "gated",
               "--num-sat", "2", "--steps", "2", "--batch-size", "2", "--blocks-per-seq", "3", "--seq-len", "40",
               "--lora-r", "4", "--sources", corpus[0], "--heldout-sources", corpus[1]])
    assert rc == 0
    assert TrainConfig.from_dict(json.loads((tmp_path / "run" / "train_config.json").read_text())).mode == "gated"
    capsys.readouterr()
    rc = main(["generate", str(tmp_path / "run" / "model"), "--prompt", "def f(x):", "--mode", "tree",
               "--max-new-tokens", "8", "--ignore-eos", "--compare-ar", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["same_as_ar"] and len(doc["token_ids"]) == 8


def test_served_gated_dir_has_a_vllm_lora_view(tiny_gated_dirs):
    """vLLM's LoRA loader refuses the adapter's SAT-row tensor: the served directory carries the LoRA
    matrices alone, under peft's keys, with the layers' short names, rank and alpha."""
    from sdsat_vllm.config import GATED_VLLM_LORA_DIR, gated_vllm_lora
    from sdsat_vllm.training.gated import ADAPTER_WEIGHTS, GATED_ADAPTER_DIR

    d = tiny_gated_dirs["gated_dir"]
    view, r = gated_vllm_lora(d)
    assert view == d / GATED_VLLM_LORA_DIR and r == 8
    cfg = json.loads((view / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == 16 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"}
    full = load_file(d / GATED_ADAPTER_DIR / ADAPTER_WEIGHTS)
    lora = load_file(view / ADAPTER_WEIGHTS)
    assert set(lora) == {k for k in full if ".lora_" in k} and len(lora) < len(full)
    assert all(lora[k].equal(full[k]) for k in lora)


def test_a_gated_adapter_on_an_sdsat_model_keeps_its_served_model_and_starts_from_its_sats(tmp_path, corpus):
    """An SDSAT model (a merged `lora` run) as the base of a gated run: the run starts from its SATs
    (same ids, its trained rows: with nothing learning, the held-out SAT loss is the lora model's own),
    the served directory is the SDSAT model's bit for bit but for the SAT rows, which are the adapter's,
    a plain forward is the SDSAT model's, apply-adapter rebuilds it, and a changed base is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdsat_vllm.training.trainer import evaluate
    from sdsat_vllm.training.data import load_datasets

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    lora_run = train(gated_cfg(tmp_path / "lora", corpus, mode="lora", steps=3, model=str(base_dir)), model=model,
                     tokenizer=tok)
    sat_dir = lora_run / "model"
    lora_sdsat = SDSATConfig.from_pretrained(sat_dir)

    def load_sat_model():
        return (AutoModelForCausalLM.from_pretrained(sat_dir, dtype=torch.float32),
                AutoTokenizer.from_pretrained(sat_dir))

    # the starting point: nothing learns, so the held-out SAT loss is the SDSAT model's own
    still = gated_cfg(tmp_path / "still", corpus, model=str(sat_dir), steps=1, lr=0.0, sat_lr=0.0, eval_every=1,
                      export=False)
    train(still, *load_sat_model())
    got = [json.loads(line) for line in open(tmp_path / "still" / "log.jsonl")][-1]["eval"]
    sat_model, sat_tok = load_sat_model()
    _, heldout = load_datasets(still.data, sat_tok, cache_dir=tmp_path / "still")
    want = evaluate(sat_model.eval(), heldout, lora_sdsat, still, still.eval_batches)
    assert got["sat_loss"] == pytest.approx(want["sat_loss"], abs=1e-5)

    run = train(gated_cfg(tmp_path / "gated", corpus, model=str(sat_dir), steps=3), *load_sat_model())
    meta = json.loads((run / "adapter" / "sdsat.json").read_text())
    assert meta["sdsat"]["sat_token_ids"] == list(lora_sdsat.sat_token_ids)
    assert meta["sdsat"]["train_mode"] == "gated" and meta["sdsat"]["base_model"] == str(sat_dir)
    sat_w, served_w = load_file(sat_dir / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    ids = sorted(lora_sdsat.sat_id_set)
    assert sat_w.keys() == served_w.keys()
    for k, t in sat_w.items():
        if t.shape[0] == served_w["model.embed_tokens.weight"].shape[0]:  # vocabulary-sized: all rows but the SATs'
            keep = torch.ones(t.shape[0], dtype=torch.bool)
            keep[ids] = False
            assert torch.equal(served_w[k][keep], t[keep]), k
        else:
            assert torch.equal(served_w[k], t), k
    adapter_rows = load_file(run / "adapter" / "adapter_model.safetensors")[
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert torch.equal(served_w["model.embed_tokens.weight"][ids], adapter_rows)
    assert not torch.equal(adapter_rows, sat_w["model.embed_tokens.weight"][ids])  # the rows trained on
    check_base_tensors(run / "model")

    served = load_gated_dir(run / "model", dtype=torch.float32).eval()
    text = torch.randint(2, 380, (2, 30), generator=torch.Generator().manual_seed(3))
    _, b = sat_layout(lora_sdsat, seed=11)
    with torch.no_grad():
        assert torch.equal(served(input_ids=text).logits, sat_model(input_ids=text).logits)
        drafted = layout_logits(served, b)[b.input_ids == ids[0]]
        assert not torch.allclose(drafted, layout_logits(sat_model, b)[b.input_ids == ids[0]])

    rebuilt = apply_adapter(str(sat_dir), run / "adapter", tmp_path / "rebuilt")
    again = load_file(rebuilt / "model.safetensors")
    assert again.keys() == served_w.keys() and all(torch.equal(again[k], served_w[k]) for k in again)
    tampered, ttok = load_sat_model()
    with torch.no_grad():
        tampered.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    tampered_dir = save_model_dir(tampered, ttok, tmp_path / "tampered")
    with pytest.raises(ValueError, match=r"not the ones the gated adapter was trained on.*up_proj"):
        apply_adapter(str(tampered_dir), run / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_what_cannot_train_on_an_sdsat_model_is_refused_clearly(tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    sat_dir = train(gated_cfg(tmp_path / "lora", corpus, mode="lora", steps=1, model=str(base_dir)), model=model,
                    tokenizer=tok) / "model"
    gated_dir = train(gated_cfg(tmp_path / "gated", corpus, steps=1, model=str(base_dir)),
                      *make_tiny_model()) / "model"

    def run(model_dir, name, **kw):
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        train(gated_cfg(tmp_path / name, corpus, model=str(model_dir), **kw), m, AutoTokenizer.from_pretrained(model_dir))

    for mode in ("lora", "frozen", "full"):
        with pytest.raises(ValueError, match=f"already has SAT tokens.*only mode gated.*mode '{mode}'"):
            run(sat_dir, f"as_{mode}", mode=mode)
    with pytest.raises(ValueError, match=f"draft K={K}.*K={K + 1}"):
        run(sat_dir, "k", num_sat=K + 1)
    with pytest.raises(ValueError, match=r"has 1 distinct SAT id\(s\); the run asks for K distinct ids"):
        run(sat_dir, "distinct", distinct_sats=True)
    with pytest.raises(ValueError, match="a gated SDSAT model: its drafter is its adapter"):
        run(gated_dir, "on_gated")
    for name in ("as_lora", "as_frozen", "as_full", "k", "distinct", "on_gated"):  # nothing trained, nothing written but the config
        assert not (tmp_path / name / "checkpoint").exists() and not (tmp_path / name / "model").exists()


def test_a_shipped_gated_adapter_on_a_shipped_sdsat_model_builds_from_it(tmp_path, corpus, monkeypatch):
    """ShippedAdapter(base=<a shipped SDSAT model>): `sdsat fetch` builds that model first, then the gated
    directory on it; the marker names the model under it, so a new adapter there rebuilds this one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdsat_vllm import adapters
    from sdsat_vllm.adapters.manifest import write_manifest
    from sdsat_vllm.models.cache import read_marker

    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    lora = train(gated_cfg(tmp_path / "lora", corpus, mode="lora", steps=2, model=str(base_dir)), model=model,
                 tokenizer=tok)
    write_manifest(lora / "adapter")
    under = adapters.ShippedAdapter("tiny-sdsat", str(base_dir), str(lora / "adapter"))
    monkeypatch.setitem(adapters.SHIPPED, under.name, under)
    sat_dir = adapters.resolve_model(under.name, cache_dir=tmp_path / "cache")
    gated = train(gated_cfg(tmp_path / "gated", corpus, model=under.name, steps=2),
                  AutoModelForCausalLM.from_pretrained(sat_dir, dtype=torch.float32),
                  AutoTokenizer.from_pretrained(sat_dir))
    write_manifest(gated / "adapter")
    spec = adapters.ShippedAdapter("tiny-sdsat-gated", under.name, str(gated / "adapter"))
    monkeypatch.setitem(adapters.SHIPPED, spec.name, spec)
    built = adapters.resolve_model(spec.name, cache_dir=tmp_path / "cache")
    a, b = load_file(built / "model.safetensors"), load_file(gated / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert SDSATConfig.from_pretrained(built).base_model == under.name
    assert read_marker(built)["base_built_from"]["name"] == under.name
    assert adapters.resolve_model(spec.name, cache_dir=tmp_path / "cache") == built  # cached


def test_load_model_dir_gives_a_gated_directory_its_gate_and_a_plain_one_none(tiny_gated_dirs):
    """Every reader of SAT rows (the engine, eval_sat_accuracy.py, simulate_policy.py) loads through
    load_model_dir: a gated directory comes with its gate, so its SAT rows carry the adapter (they differ
    from the same directory loaded plainly, the negative control), its standard rows do not; a plain
    directory comes as it is."""
    from transformers import AutoModelForCausalLM

    from sdsat_vllm.config import SDSATConfig
    from sdsat_vllm.training.gated import gate_of, load_model_dir

    d = tiny_gated_dirs["gated_dir"]
    gated = load_model_dir(d, dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert gate_of(gated) is not None and gate_of(plain) is None
    sat = list(SDSATConfig.from_pretrained(d).sat_token_ids)
    ids = torch.tensor([tiny_gated_dirs["prompts"][0] + sat])
    with torch.no_grad():
        a, b = gated(ids).logits[0], plain(ids).logits[0]
    k = len(sat)
    assert torch.equal(a[:-k], b[:-k]) and not torch.allclose(a[-k:], b[-k:])
    base = load_model_dir(tiny_gated_dirs["base_dir"], dtype=torch.float32)
    assert gate_of(base) is None


def test_gated_targets_are_checked_and_choose_the_layers():
    """gated_targets: short names, vLLM's packed groups whole, gated mode only; install gates exactly the
    layers named (none of the others), and a name the model lacks is refused with what it has."""
    from sdsat_vllm.training.gated import check_gated_targets, gated_layers, install_gated_lora

    assert check_gated_targets(["up_proj", "gate_proj", "up_proj"]) == ("gate_proj", "up_proj")
    assert check_gated_targets(()) == ()
    with pytest.raises(ValueError, match="q_proj, k_proj, v_proj as one packed layer.*got q_proj"):
        check_gated_targets(["q_proj", "o_proj"])
    with pytest.raises(ValueError, match="short names"):
        check_gated_targets(["model.layers.0.mlp"])
    with pytest.raises(ValueError, match="needs mode gated"):
        gated_cfg("out", mode="lora", gated_targets=("o_proj",))
    assert gated_cfg("out", gated_targets=["up_proj", "gate_proj"]).gated_targets == ("gate_proj", "up_proj")
    model, tok = make_tiny_model()
    sdsat = add_sat_tokens(model, tok, K, train_mode="gated")
    install_gated_lora(model, sdsat.sat_token_ids, 4, 8, ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
    names = {n.rsplit(".", 1)[-1] for n in gated_layers(model)}
    assert names == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    assert len(gated_layers(model)) == 5 * model.config.num_hidden_layers
    other, otok = make_tiny_model()
    with pytest.raises(ValueError, match=r"\['w1'\] name no linear layer.*down_proj"):
        install_gated_lora(other, sdsat.sat_token_ids, 4, 8, ("w1",))


def test_a_gated_run_on_fewer_layers_exports_serves_and_warm_starts_from_a_full_one(tmp_path, corpus):
    """A run with gated_targets exports an adapter for those layers only (peft config, vLLM's LoRA view);
    its served directory loads with the gate on those layers, its standard rows the base's bit for bit
    and its SAT rows not; a run on fewer layers warm-starts from an adapter on every layer (its other
    layers' matrices left out), while a run on every layer refuses an adapter on fewer."""
    from transformers import AutoModelForCausalLM

    from sdsat_vllm.config import gated_vllm_lora
    from sdsat_vllm.training.gated import gated_layers

    targets = ("gate_proj", "up_proj")
    model, tok = make_tiny_model()
    base_dir = save_model_dir(model, tok, tmp_path / "base")
    run = train(gated_cfg(tmp_path / "mlp", corpus, model=str(base_dir), gated_targets=targets), model=model,
                tokenizer=tok)
    cfg_json = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert {t.rsplit(".", 1)[-1] for t in cfg_json["target_modules"]} == set(targets)
    view, _ = gated_vllm_lora(run / "model")
    assert sorted(json.loads((view / "adapter_config.json").read_text())["target_modules"]) == list(targets)
    served = load_gated_dir(run / "model", dtype=torch.float32).eval()
    assert {n.rsplit(".", 1)[-1] for n in gated_layers(served)} == set(targets)
    sdsat = SDSATConfig.from_pretrained(run / "model")
    ids = torch.tensor([[5, 17, 99, 42] + list(sdsat.sat_token_ids)])
    ungated = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32).eval()  # the base's tensors
    with torch.no_grad():
        a, b = served(ids).logits[0], ungated(ids).logits[0]
    assert torch.equal(a[:4], b[:4]) and not torch.allclose(a[4:], b[4:])

    m, t = make_tiny_model()
    full = train(gated_cfg(tmp_path / "full", corpus, steps=2), model=m, tokenizer=t)
    m, t = make_tiny_model()
    warm = train(gated_cfg(tmp_path / "warm", corpus, steps=1, lr=0.0, sat_lr=0.0, gated_targets=targets,
                           init_adapter=str(full / "adapter")), model=m, tokenizer=t)
    have = load_file(full / "adapter" / "adapter_model.safetensors")
    got = load_file(warm / "adapter" / "adapter_model.safetensors")
    lora = {k for k in got if ".lora_" in k}
    assert lora and {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in lora} == set(targets)
    assert set(got) < set(have) and all(torch.equal(got[k], have[k]) for k in got)  # nothing learnt at lr 0
    m, t = make_tiny_model()
    with pytest.raises(ValueError, match="missing"):
        train(gated_cfg(tmp_path / "refused", corpus, steps=1, export=False, init_adapter=str(run / "adapter")),
              model=m, tokenizer=t)
