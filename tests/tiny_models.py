"""Tiny random causal LMs and a real (byte-level BPE) tokenizer, built on the fly for tests.

Everything here is small enough to build in about a second on two CPU cores, and is saved as an
ordinary Hugging Face directory so that transformers and vLLM load it the same way they load a
real model.
"""

from __future__ import annotations

import functools
import json
import sys
import sysconfig
from pathlib import Path

import torch

# head_dim 32: vLLM's CPU attention kernels do not take smaller heads.
TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, max_position_embeddings=1024)


def stdlib_sample_text(max_chars: int = 200_000) -> str:
    """Real Python code to train tokenizers and tiny models on (never an evaluation prompt)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for name in ["textwrap.py", "string.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "glob.py",
                 "colorsys.py", "keyword.py", "linecache.py", "this.py", "copy.py", "abc.py", "queue.py"]:
        p = root / name
        if p.is_file():
            t = p.read_text(encoding="utf-8", errors="replace")
            chunks.append(t)
            total += len(t)
        if total >= max_chars:
            break
    return "\n".join(chunks)[:max_chars]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([stdlib_sample_text()], trainer=trainer)
    return tok.to_str()


def make_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on stdlib code: real merges, decodes any text."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
                                  eos_token="<|endoftext|>", pad_token="<|pad|>", bos_token=None)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    return tok


def make_tiny_model(arch: str = "llama", vocab_size: int | None = None, seed: int = 0, tokenizer=None, **overrides):
    """A random Llama or Qwen2 causal LM in fp32 with the tiny tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or make_tiny_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    common = dict(vocab_size=vocab_size, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=None, tie_word_embeddings=False, torch_dtype="float32", **TINY_DIMS)
    common.update(overrides)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"unknown tiny arch {arch!r}")
    return model.eval(), tokenizer


def save_model_dir(model, tokenizer, path) -> Path:
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


GATED_K, GATED_PROMPT_LEN, GATED_ROW_LEN = 4, 8, 64


def train_tiny_gated(out, steps: int = 150) -> dict:
    """A tiny gated SDSAT model whose SATs learnt the base's own greedy continuations of 4 random
    prompts (self-distilled), exported with `export_run`. Returns dict(base_dir: the base model alone
    (no SATs), gated_dir: the served gated directory, prompts: the 4 prompts as token ids, run: the
    export directory). The base is a tiny random Llama with peaked logits (initializer_range 0.2) so
    that its continuations are learnable. Call with torch on one thread (~1 min)."""
    from sdsat_vllm.decoding.generator import SDSATGenerator
    from sdsat_vllm.training.data import TokenRows
    from sdsat_vllm.training.export import export_run
    from sdsat_vllm.training.gated import base_tensor_digests
    from sdsat_vllm.training.sat_setup import add_sat_tokens
    from sdsat_vllm.training.trainer import TrainConfig, batch_for, lr_factor, make_trainable, sat_forward_loss

    out = Path(out)
    base, tok = make_tiny_model(initializer_range=0.2)
    base_dir = save_model_dir(base, tok, out / "base")
    base_gen = SDSATGenerator(base, tok)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(4):
        prompt = torch.randint(2, 380, (GATED_PROMPT_LEN,), generator=g).tolist()
        rows.append(prompt + base_gen.generate(prompt, mode="ar", max_new_tokens=GATED_ROW_LEN - GATED_PROMPT_LEN,
                                               ignore_eos=True).token_ids)
    rows = TokenRows.unbroken(torch.tensor(rows))  # [4, GATED_ROW_LEN] the base's own greedy text

    model, mtok = make_tiny_model(initializer_range=0.2)
    digests = base_tensor_digests(model, torch.float32)
    sdsat = add_sat_tokens(model, mtok, GATED_K, train_mode="gated")
    cfg = TrainConfig(model="tiny", output_dir=str(out / "run"), mode="gated", num_sat=GATED_K, blocks_per_seq=12,
                      batch_size=4, steps=steps, dtype="fp32", lr=1e-2, sat_lr=1e-2, warmup_steps=5, lora_r=8,
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
    export_run(model, mtok, sdsat, cfg, out / "run", torch.float32, base_tensors=digests)
    return dict(base_dir=base_dir, gated_dir=out / "run" / "model", run=out / "run",
                prompts=[r[:GATED_PROMPT_LEN] for r in rows.ids.tolist()])


if __name__ == "__main__":  # python tests/tiny_models.py OUT_DIR: a tiny SDSAT model dir for poking at
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sdsat_vllm.training.sat_setup import add_sat_tokens

    m, t = make_tiny_model()
    add_sat_tokens(m, t, num_sat=3)
    print(save_model_dir(m, t, sys.argv[1]))


def train_tiny_sdsat(out_dir, num_sat: int = 4, arch: str = "llama", steps: int = 400, seed: int = 0,
                     min_agreement: float = 0.9, attempts: int = 3):
    """A tiny model fully fine-tuned with SATs on one short passage until it memorises it: its SAT
    drafts then match its own greedy predictions (held-out teacher-forced agreement ~0.97), so decoding
    tests see whole drafts accepted. Returns the exported HF directory.

    Memorisation is a phase change whose step varies with the random init and with the machine's float
    rounding, so a run that stays below min_agreement is retried with the next seed; the model only
    learns positions < seq_len (96), so prompt + output must stay inside that."""
    from sdsat_vllm.training.data import DataConfig
    from sdsat_vllm.training.trainer import TrainConfig, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    passage = tiny_training_passage()
    (out_dir / "train.txt").write_text((passage + "\n") * 40)
    (out_dir / "heldout.txt").write_text(passage)
    agreements = []
    for attempt_seed in range(seed, seed + attempts):
        run = out_dir / f"run-seed{attempt_seed}"
        model, tokenizer = make_tiny_model(arch, seed=attempt_seed)
        cfg = TrainConfig(model=f"tiny-{arch}", output_dir=str(run), mode="full", num_sat=num_sat,
                          blocks_per_seq=12, batch_size=8, steps=steps, dtype="fp32", lr=3e-3, sat_lr=3e-3,
                          warmup_steps=30, eval_every=steps, eval_batches=2, log_every=steps, save_every=steps,
                          seed=attempt_seed, data=DataConfig(sources=(str(out_dir / "train.txt"),),
                                                          heldout_sources=(str(out_dir / "heldout.txt"),), seq_len=96))
        train(cfg, model=model, tokenizer=tokenizer, log=lambda *_: None)
        final = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
        agreements.append(min(final["eval"]["sat_agree"]))
        if agreements[-1] >= min_agreement:
            return run / "model"
    raise RuntimeError(f"tiny SAT training did not memorise its passage: held-out agreement {agreements} "
                       f"< {min_agreement} for seeds {seed}..{seed + attempts - 1}")


def tiny_training_passage() -> str:
    """The text the tiny trained model memorises; prompts taken from it get long accepted drafts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return (root / "textwrap.py").read_text(encoding="utf-8")[:800]


def memorised_prompts() -> list[str]:
    """Whole lines of the memorised passage, short enough that prompt + 32 new tokens stay within the
    96 positions the tiny model was trained on (a prompt cut mid-word tokenises unlike the passage)."""
    lines = tiny_training_passage().splitlines(keepends=True)
    return ["".join(lines[7:10]), "".join(lines[11:13])]
