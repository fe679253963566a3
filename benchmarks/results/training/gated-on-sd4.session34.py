"""Scratch experiment (not shipped): a gated LoRA trained on top of -sd4's merged model, whose SAT
tokens already exist, so the served model stays -sd4's bit for bit while the SATs get LoRA capacity.
The trainer refuses a model that already has SATs; here add_sat_tokens is replaced by one that
returns the model's own SDSAT block."""
import sys
from sdsat_vllm.config import SDSATConfig
from sdsat_vllm.training import trainer
from sdsat_vllm.training.data import DataConfig
from sdsat_vllm.adapters import resolve_sdsat_model


def existing_sats(model, tokenizer, num_sat, distinct, train_mode, base_id, base_sha):
    cfg = SDSATConfig.from_dict({**model.config.sdsat, "train_mode": train_mode})
    assert cfg.num_sat == num_sat
    return cfg


trainer.add_sat_tokens = existing_sats
model_dir = str(resolve_sdsat_model("smollm2-135m-sdsat"))
data = DataConfig(
    sources=("data/smollm2-135m-sdsat4-questions.jsonl.gz", "data/smollm2-135m-sdsat4-questions2.jsonl.gz",
             "data/smollm2-135m-self-distill.jsonl.gz"),
    heldout_sources=("data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz",
                     "data/smollm2-135m-self-distill.heldout.jsonl.gz"),
    shuffle_seed=5, max_answer_tokens=64)
cfg = trainer.TrainConfig(model=model_dir, output_dir=sys.argv[1], mode="gated", num_sat=5, blocks_per_seq=64,
                          batch_size=2, grad_accum=2, steps=int(sys.argv[2]), lr=float(sys.argv[3]), sat_lr=1.2e-3,
                          warmup_steps=5, dtype="fp32", sat_blocks="drafted", lora_r=8, lora_alpha=16,
                          eval_every=int(sys.argv[4]), eval_batches=16, save_every=5, log_every=5,
                          threads=int(sys.argv[5]), max_minutes=float(sys.argv[6]), export=False, data=data)
trainer.train(cfg)
