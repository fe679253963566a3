"""Shipped adapters and the models they rebuild: the sha256 manifest of every shipped adapter, the
refusal of a damaged adapter, and the cached built directory (staged, marker written last, checked
on reuse, rebuilt when damaged).

The real shipped adapters are only hashed here (never built: that needs the real base model); the
build tests use a tiny Llama saved as the base and a LoRA adapter trained for one step on it, in a
temporary cache directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdsat_vllm import adapters, models
from sdsat_vllm.adapters.manifest import (
    MANIFEST,
    REQUIRED,
    AdapterIntegrityError,
    adapter_files,
    read_manifest,
    verify_adapter,
    write_manifest,
)
from sdsat_vllm.models import cache

# ---------------------------------------------------------------------------------------------
# The shipped adapters' manifests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(adapters.SHIPPED))
def test_shipped_adapter_matches_its_manifest(name):
    """Fails when a shipped adapter's files change without a new SHA256SUMS: whoever ships an adapter
    runs `python -m sdsat_vllm.adapters.manifest` (see adapters/manifest.py)."""
    spec = adapters.SHIPPED[name]
    manifest = read_manifest(spec.path)
    assert sorted(manifest) == adapter_files(spec.path), "every file of the adapter is pinned, nothing else"
    assert set(REQUIRED) <= set(manifest)
    assert verify_adapter(spec.path) == manifest


# ---------------------------------------------------------------------------------------------
# A tiny base and adapter, shipped under a test name
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base_and_adapter(tmp_path_factory):
    """(base HF dir, adapter dir): a tiny Llama and a LoRA adapter trained one step on it."""
    import torch
    from tiny_models import make_tiny_model, save_model_dir, tiny_training_passage

    from sdsat_vllm.training.data import DataConfig
    from sdsat_vllm.training.trainer import TrainConfig, train

    d = tmp_path_factory.mktemp("tiny_adapter")
    (d / "a.txt").write_text((tiny_training_passage() + "\n") * 4)
    (d / "b.txt").write_text(tiny_training_passage())
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run outside conftest's per-test thread setting
    try:
        model, tok = make_tiny_model()
        base = save_model_dir(model, tok, d / "base")
        cfg = TrainConfig(model=str(base), output_dir=str(d / "run"), num_sat=2, blocks_per_seq=2, batch_size=2,
                          steps=1, dtype="fp32", eval_every=1000, save_every=1000,
                          data=DataConfig(sources=(str(d / "a.txt"),), heldout_sources=(str(d / "b.txt"),), seq_len=32))
        train(cfg, model=model, tokenizer=tok)
    finally:
        torch.set_num_threads(before)
    return base, d / "run" / "adapter"


class Builds:
    def __init__(self):
        self.count = 0


@pytest.fixture
def shipped(tiny_base_and_adapter, tmp_path, monkeypatch):
    """A shipped adapter named 'tiny-sdsat' (a copy with its manifest), a fresh cache, a build counter,
    and a fresh process's view of the cache (nothing verified yet)."""
    from sdsat_vllm.training import export

    base, adapter = tiny_base_and_adapter
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    write_manifest(copy)
    spec = adapters.ShippedAdapter("tiny-sdsat", str(base), str(copy))
    monkeypatch.setitem(adapters.SHIPPED, spec.name, spec)
    builds = Builds()
    real = export.apply_adapter

    def counted(*a, **kw):
        builds.count += 1
        return real(*a, **kw)

    monkeypatch.setattr(export, "apply_adapter", counted)
    monkeypatch.setattr(cache, "_VERIFIED", set())
    return spec, tmp_path / "cache", builds


def _contents(d: Path) -> dict[str, bytes]:
    """Every file under d but the marker (which holds a creation time), by relative path."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != models.MARKER_FILE}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# ---------------------------------------------------------------------------------------------
# A damaged adapter is refused
# ---------------------------------------------------------------------------------------------


def test_truncated_adapter_is_refused_clearly(shipped):
    spec, cache_dir, builds = shipped
    weights = spec.path / "adapter_model.safetensors"
    want = read_manifest(spec.path)["adapter_model.safetensors"]
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(AdapterIntegrityError) as e:
        adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    msg = str(e.value)
    assert str(weights) in msg and want in msg and models.sha256_file(weights) in msg
    assert "expected sha256" in msg and "found" in msg and "Reinstall the package" in msg
    assert isinstance(e.value, models.ModelFetchError)  # what `sdsat fetch` reports as an error line
    assert builds.count == 0 and not cache_dir.exists()  # nothing built, nothing half-written


def test_edited_missing_or_unpinned_adapter_files_are_refused(shipped):
    spec, cache_dir, builds = shipped
    meta = spec.path / "sdsat.json"
    meta.write_text(meta.read_text().replace('"num_sat": 2', '"num_sat": 3'))
    with pytest.raises(AdapterIntegrityError, match="sdsat.json is damaged"):
        adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    meta.unlink()
    with pytest.raises(AdapterIntegrityError, match=r"sdsat.json is missing \(expected sha256"):
        adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    (spec.path / MANIFEST).unlink()
    with pytest.raises(AdapterIntegrityError, match="has no SHA256SUMS.*Reinstall the package"):
        adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    (spec.path / MANIFEST).write_text(f"{'0' * 64}  adapter_config.json\n")
    with pytest.raises(AdapterIntegrityError, match="does not pin adapter_model.safetensors, sdsat.json"):
        adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    assert builds.count == 0


def test_manifest_cli_rewrites_the_manifest(shipped, capsys):
    from sdsat_vllm.adapters.manifest import main

    spec, _, _ = shipped
    (spec.path / MANIFEST).unlink()
    assert main([str(spec.path)]) == 0
    assert capsys.readouterr().out.strip() == str(spec.path / MANIFEST)
    lines = (spec.path / MANIFEST).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == adapter_files(spec.path)  # sha256sum format, sorted
    assert verify_adapter(spec.path) == read_manifest(spec.path)


# ---------------------------------------------------------------------------------------------
# The built directory: staged, marker last, checked on reuse, rebuilt when damaged
# ---------------------------------------------------------------------------------------------


def test_built_dir_has_a_marker_and_is_reused(shipped, monkeypatch):
    spec, cache_dir, builds = shipped
    out = adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    digests = read_manifest(spec.path)
    assert out == cache_dir.resolve() / f"tiny-sdsat-{digests['adapter_model.safetensors'][:12]}"
    assert _leftovers(cache_dir) == [out.name]  # the work directory is gone
    marker = models.read_marker(out)
    assert marker["adapter_sha256"] == digests and marker["base"] == spec.base
    assert set(marker["sha256"]) == set(marker["files"]) == set(_contents(out))
    assert all(marker["sha256"][n] == models.sha256_file(out / n) for n in marker["files"])
    assert models.gguf_sha256(out) is None  # not a converted GGUF: training must not take it for one
    assert adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir) == out and builds.count == 1

    # Same process: not hashed again. A new process: hashed once, not rebuilt.
    hashed = []
    real = models.hashing.sha256_file
    monkeypatch.setattr(models.hashing, "sha256_file", lambda p, **kw: hashed.append(Path(p).name) or real(p, **kw))
    adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    assert sorted(hashed) == sorted(digests)  # the adapter's files only
    hashed.clear()
    cache.forget_verified()
    adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    assert sorted(hashed) == sorted([*digests, *marker["files"]]) and builds.count == 1


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped byte in the weights": (lambda d: _flip_byte(d / "model.safetensors"), "model.safetensors has sha256"),
    "truncated tokenizer": (lambda d: (d / "tokenizer.json").write_text("{"), "tokenizer.json has 1 bytes"),
    "deleted marker": (lambda d: (d / models.MARKER_FILE).unlink(), "no readable sdsat_source.json"),
    "deleted config": (lambda d: (d / "config.json").unlink(), "config.json is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_built_dir_is_rebuilt_like_a_fresh_build(shipped, damage, capsys):
    spec, cache_dir, builds = shipped
    out = adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    fresh = _contents(out)
    do, why = DAMAGE[damage]
    do(out)
    cache.forget_verified()  # a later process (a same-size edit within one clock tick would be missed here)
    capsys.readouterr()
    assert adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir) == out
    assert builds.count == 2
    log = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[sdsat fetch]")]
    assert len(log) == 1 and str(out) in log[0] and why in log[0] and "rebuilding it" in log[0], log
    assert _contents(out) == fresh and models.read_marker(out)["files"] == {n: len(b) for n, b in fresh.items()}
    assert _leftovers(cache_dir) == [out.name]
    assert adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir) == out and builds.count == 2


def test_adapter_change_under_the_same_weights_rebuilds(shipped, capsys):
    """The entry is keyed by the weights' hash; a new sdsat.json/adapter_config.json (manifest rewritten)
    still rebuilds it, through the adapter digests in its marker."""
    spec, cache_dir, builds = shipped
    out = adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    cfg = json.loads((spec.path / "adapter_config.json").read_text())
    cfg["revision"] = "test"
    (spec.path / "adapter_config.json").write_text(json.dumps(cfg))
    write_manifest(spec.path)
    assert adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir) == out and builds.count == 2
    assert "built from other inputs (its marker's adapter_sha256" in capsys.readouterr().err
    assert models.read_marker(out)["adapter_sha256"] == read_manifest(spec.path)


def test_interrupted_build_leaves_no_entry(shipped, monkeypatch):
    from sdsat_vllm.training import export

    spec, cache_dir, _ = shipped

    def interrupted(base, adapter_dir, out_dir, **kw):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")  # half-written output
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "apply_adapter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    assert _leftovers(cache_dir) == []


def test_a_datastore_shipped_with_an_adapter_lands_in_the_built_model(shipped):
    """An adapter's datastore.safetensors (the model's own text for lookup drafts) is copied into the
    model directory built from it, where the vLLM proposer looks; a new one rebuilds the directory."""
    from sdsat_vllm.datastore import ADAPTER_FILE, MODEL_DIR_FILE, load_datastore, save_datastore

    spec, cache_dir, builds = shipped
    out = adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    assert not (out / MODEL_DIR_FILE).exists() and builds.count == 1
    save_datastore(spec.path / ADAPTER_FILE, [[1, 2, 3]], {"model": "tiny"})
    write_manifest(spec.path)
    out = adapters.resolve_sdsat_model(spec.name, cache_dir=cache_dir)
    assert builds.count == 2
    assert (out / MODEL_DIR_FILE).read_bytes() == (spec.path / ADAPTER_FILE).read_bytes()
    assert load_datastore(out / MODEL_DIR_FILE).match([1, 2], 1).tokens == [3]
    assert not list(out.rglob("*.part"))
    # vLLM loads every *.safetensors file at the directory's top level as weights: not the datastore
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
