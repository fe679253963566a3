"""Scratch: -g1's held-out agreement with the gated delta on every linear layer, and with it dropped on
o_proj + down_proj (the rows gate would hook 2 of 4 packed layers a layer) or on the MLP or attention."""
import json, sys, time, torch
sys.path.insert(0, "/work/main")
torch.set_num_threads(1)
from transformers import AutoTokenizer
from sdsat_vllm.adapters import resolve_model
from sdsat_vllm.config import SDSATConfig
from sdsat_vllm.training.data import DataConfig, corpus_files, pack_tokens
from sdsat_vllm.training.gated import load_model_dir, gated_layers
from sdsat_vllm.training.trainer import TrainConfig, evaluate

model_dir = resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-sdsat-g1")
sdsat = SDSATConfig.from_pretrained(model_dir)
tok = AutoTokenizer.from_pretrained(model_dir)
src = ["/work/main/data/smollm2-135m-sdsat4-questions2.heldout.jsonl.gz", "/work/main/data/smollm2-135m-self-distill.heldout.jsonl.gz"]
heldout = pack_tokens(tok, corpus_files(tuple(src)), 256, 32 * 256, "tokenize held-out", 64)[:32]
data = DataConfig(seq_len=256, max_train_tokens=256)
cfg = TrainConfig(model=str(model_dir), output_dir="-", mode="full", num_sat=sdsat.num_sat, batch_size=4,
                  blocks_per_seq=64, dtype="fp32", data=data, sat_blocks="drafted")
model = load_model_dir(model_dir, dtype=torch.float32).eval()
layers = gated_layers(model)
saved = {n: l.lora_B.weight.detach().clone() for n, l in layers.items()}
out = {}
for name, drop in [("all layers", ()), ("no o_proj, down_proj", ("o_proj", "down_proj")),
                   ("attention only", ("gate_proj", "up_proj", "down_proj")), ("MLP only", ("q_proj", "k_proj", "v_proj", "o_proj"))]:
    for n, l in layers.items():
        l.lora_B.weight.data.copy_(saved[n])
        if n.rsplit(".", 1)[-1] in drop:
            l.lora_B.weight.data.zero_()
    t = time.time()
    r = evaluate(model, heldout, sdsat, cfg)
    out[name] = r["sat_agree"]
    print(name, [round(x, 3) for x in r["sat_agree"]], f"{time.time() - t:.0f}s", flush=True)
json.dump(out, open("/work/runs/s37/prune_eval.json", "w"), indent=1)
