"""The rows gate (sdsat_vllm/vllm_plugin/sat_row_lora.py) on a model shaped as vLLM's: packed qkv_proj and
gate_up_proj layers that know their sizes and return (output, bias). The SAT rows get the adapter's delta
as the per-part LoRA formula gives it, every other row is the base model's bit for bit, the mask follows
each forward (eager and under torch.compile, without recompiling), and what cannot be installed is refused.
Through a real vLLM engine: tests/vllm_plugin/test_vllm_plugin_gated.py."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sdsat_vllm.vllm_plugin.sat_row_lora import gate_path, install_sat_row_lora

H, Q, KV, INTER, V, R, ALPHA = 16, 16, 8, 24, 40, 4, 8
SAT = 39
PARTS = {"self_attn.q_proj": (H, Q), "self_attn.k_proj": (H, KV), "self_attn.v_proj": (H, KV),
         "self_attn.o_proj": (Q, H), "mlp.gate_proj": (H, INTER), "mlp.up_proj": (H, INTER), "mlp.down_proj": (INTER, H)}


class Linear(nn.Module):
    """vLLM's LinearBase as the gate sees it: its sizes, params_dtype, an (output, bias) result."""

    def __init__(self, n_in, n_out, g):
        super().__init__()
        self.input_size_per_partition, self.output_size_per_partition = n_in, n_out
        self.params_dtype = torch.float32
        self.weight = nn.Parameter(torch.randn(n_out, n_in, generator=g) / n_in ** 0.5)

    def forward(self, x):
        return x @ self.weight.t(), None


class Inner(nn.Module):
    def __init__(self, layers, g):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, H, _weight=torch.randn(V, H, generator=g))
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.self_attn, layer.mlp = nn.Module(), nn.Module()
            layer.self_attn.qkv_proj, layer.self_attn.o_proj = Linear(H, Q + 2 * KV, g), Linear(Q, H, g)
            layer.mlp.gate_up_proj, layer.mlp.down_proj = Linear(H, 2 * INTER, g), Linear(INTER, H, g)
            self.layers.append(layer)

    def forward(self, input_ids):
        h = self.embed_tokens(input_ids)  # [N, H]; rows never mix (no attention), so each row is its own check
        for layer in self.layers:
            qkv, _ = layer.self_attn.qkv_proj(h)
            h = h + layer.self_attn.o_proj(qkv[:, :Q] * torch.sigmoid(qkv[:, Q:Q + KV].sum(-1, keepdim=True)))[0]
            gu, _ = layer.mlp.gate_up_proj(h)
            h = h + layer.mlp.down_proj(nn.functional.silu(gu[:, :INTER]) * gu[:, INTER:])[0]
        return h


class VllmShapedLM(nn.Module):
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    def __init__(self, layers=2, seed=0):
        super().__init__()
        self.model = Inner(layers, torch.Generator().manual_seed(seed))

    def forward(self, input_ids, positions=None):
        return self.model(input_ids)


def write_adapter(path, layers=2, seed=1, skip=(), extra=()):
    """A plain peft LoRA adapter (what a served gated directory's sdsat_vllm_lora/ holds)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        for part, (n_in, n_out) in PARTS.items():
            name = f"model.layers.{i}.{part}"
            if name in skip:
                continue
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(R, n_in, generator=g) * 0.3
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(n_out, R, generator=g) * 0.3
    for name, (n_in, n_out) in extra:
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(R, n_in, generator=g)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(n_out, R, generator=g)
    path.mkdir(parents=True)
    save_file(tensors, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps({"r": R, "lora_alpha": ALPHA}))
    return tensors


def reference(model, tensors, input_ids):
    """The gate's meaning, part by part: base + (alpha / r) x A^T B^T on SAT rows of every targeted layer."""
    def delta(name, x):
        if f"base_model.model.{name}.lora_A.weight" not in tensors:  # a layer the adapter does not target
            return torch.zeros(x.shape[0], PARTS[name.split(".", 3)[-1]][1])
        a = tensors[f"base_model.model.{name}.lora_A.weight"]
        b = tensors[f"base_model.model.{name}.lora_B.weight"]
        return (x @ a.t() @ b.t()) * (ALPHA / R)

    sat = (input_ids == SAT).unsqueeze(1)
    inner = model.model
    h = inner.embed_tokens(input_ids)
    for i, layer in enumerate(inner.layers):
        p = f"model.layers.{i}."
        qkv = layer.self_attn.qkv_proj(h)[0] + torch.where(sat, torch.cat(
            [delta(p + "self_attn.q_proj", h), delta(p + "self_attn.k_proj", h), delta(p + "self_attn.v_proj", h)], 1), 0)
        x = qkv[:, :Q] * torch.sigmoid(qkv[:, Q:Q + KV].sum(-1, keepdim=True))
        h = h + layer.self_attn.o_proj(x)[0] + torch.where(sat, delta(p + "self_attn.o_proj", x), 0)
        gu = layer.mlp.gate_up_proj(h)[0] + torch.where(sat, torch.cat(
            [delta(p + "mlp.gate_proj", h), delta(p + "mlp.up_proj", h)], 1), 0)
        x = nn.functional.silu(gu[:, :INTER]) * gu[:, INTER:]
        h = h + layer.mlp.down_proj(x)[0] + torch.where(sat, delta(p + "mlp.down_proj", x), 0)
    return h


def ids_with_sats(seed, n=12, sats=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SAT, (n,), generator=g)
    ids[torch.randperm(n, generator=g)[:sats]] = SAT
    return ids


@torch.no_grad()
def test_sat_rows_get_the_adapter_and_every_other_row_is_the_base_models_bit_for_bit(tmp_path):
    tensors = write_adapter(tmp_path / "lora")
    model, plain = VllmShapedLM(), VllmShapedLM()
    assert install_sat_row_lora(model, tmp_path / "lora", [SAT, SAT], max_tokens=32) == 2 * 4
    for seed in range(3):  # the mask follows each forward's SATs
        ids = ids_with_sats(seed)
        got, base = model(input_ids=ids), plain(input_ids=ids)
        sat = ids == SAT
        assert torch.equal(got[~sat], base[~sat])
        assert torch.allclose(got[sat], reference(plain, tensors, ids)[sat], atol=1e-5)
        assert (got[sat] - base[sat]).abs().max() > 0.1  # the delta is there (a negative control of the above)
    no_sat = torch.arange(10)
    assert torch.equal(model(input_ids=no_sat), plain(input_ids=no_sat))


@torch.no_grad()
def test_an_adapter_on_fewer_layers_hooks_only_those(tmp_path):
    """A gated adapter trained on the attention and MLP inputs only (`sdsat train --gated-targets q_proj k_proj
    v_proj gate_proj up_proj`): 2 hooks a layer instead of 4 (each costs the forward two small matmuls on a
    CPU, results 37.2), SAT rows get the delta of those layers, every other row stays the base's."""
    skip = {f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.o_proj", "mlp.down_proj")}
    tensors = write_adapter(tmp_path / "lora", skip=skip)
    model, plain = VllmShapedLM(), VllmShapedLM()
    assert install_sat_row_lora(model, tmp_path / "lora", [SAT], max_tokens=32) == 2 * 2
    ids = ids_with_sats(0)
    sat = ids == SAT
    got, base = model(input_ids=ids), plain(input_ids=ids)
    assert torch.equal(got[~sat], base[~sat]) and (got[sat] - base[sat]).abs().max() > 0.1
    assert torch.allclose(got[sat], reference(plain, tensors, ids)[sat], atol=1e-5)


@torch.no_grad()
def test_under_torch_compile_the_mask_is_read_each_forward_without_recompiling(tmp_path):
    tensors = write_adapter(tmp_path / "lora")
    model, plain = VllmShapedLM(), VllmShapedLM()
    install_sat_row_lora(model, tmp_path / "lora", [SAT], max_tokens=32)
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    # vLLM compiles the inner model and calls the top one eagerly (the pre-hook writes the mask there)
    torch._dynamo.reset()
    model.model.forward = torch.compile(model.model.forward, backend=backend, dynamic=True)
    for seed in range(3):
        ids = ids_with_sats(seed, n=12 + seed)
        sat = ids == SAT
        got = model(input_ids=ids)
        assert torch.equal(got[~sat], plain(input_ids=ids)[~sat])
        assert torch.allclose(got[sat], reference(plain, tensors, ids)[sat], atol=1e-5)
    assert len(compiles) == 1
    torch._dynamo.reset()


def test_what_cannot_be_installed_is_refused_loudly(tmp_path):
    write_adapter(tmp_path / "q_only", skip={"model.layers.0.self_attn.k_proj"})
    with pytest.raises(ValueError, match=r"only part of vLLM's packed layer model.layers.0.self_attn.qkv_proj"):
        install_sat_row_lora(VllmShapedLM(), tmp_path / "q_only", [SAT], 32)
    write_adapter(tmp_path / "extra", extra=[("model.layers.7.mlp.down_proj", (INTER, H))])
    with pytest.raises(ValueError, match=r"model.layers.7.mlp.down_proj.*match no layer"):
        install_sat_row_lora(VllmShapedLM(), tmp_path / "extra", [SAT], 32)
    write_adapter(tmp_path / "ok")
    with pytest.raises(ValueError, match=r"map 16 -> 32, the layer 16 -> 48.*tensor parallel 1"):
        install_sat_row_lora(VllmShapedLM(layers=2).apply(_shrink_qkv), tmp_path / "ok", [SAT], 32)
    model = VllmShapedLM()
    install_sat_row_lora(model, tmp_path / "ok", [SAT], 8)
    with pytest.raises(ValueError, match="already has the SAT-row gate"):
        install_sat_row_lora(model, tmp_path / "ok", [SAT], 8)
    with pytest.raises(ValueError, match="a forward of 9 tokens, sized for 8"):
        model(input_ids=torch.zeros(9, dtype=torch.long))


def _shrink_qkv(module):
    if isinstance(module, Linear) and module.output_size_per_partition == Q + 2 * KV:
        module.output_size_per_partition = 48  # as a layer sharded differently would say


def test_gate_path_rows_on_an_unsharded_cpu_model_vllms_lora_layers_elsewhere():
    assert gate_path("auto", 1, on_cpu=True) == "rows"
    assert gate_path("auto", 1, on_cpu=False) == "lora"
    assert gate_path("auto", 2, on_cpu=True) == "lora"
    assert gate_path("auto", 1, 2, on_cpu=True) == "lora"
    assert gate_path("lora", 1, on_cpu=True) == "lora"
    assert gate_path("rows", 1, on_cpu=False) == "rows"
    with pytest.raises(ValueError, match="gate 'rows' serves an unsharded model.*2 x 1"):
        gate_path("rows", 2, on_cpu=True)
    assert gate_path("auto", 1, on_cpu=True, lora_enabled=True) == "lora"  # the user's LoRA layers wrap the model's
    with pytest.raises(ValueError, match="gate 'rows' keeps vLLM's LoRA off, but this engine enables it"):
        gate_path("rows", 1, on_cpu=True, lora_enabled=True)
    with pytest.raises(ValueError, match="must be 'auto', 'rows' or 'lora'"):
        gate_path("row", 1, on_cpu=True)
