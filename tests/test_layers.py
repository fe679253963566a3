"""The package's layers import one way only. Low to high:

    0  sdsat_vllm (the package root), sdsat_vllm.config, sdsat_vllm.metrics_vocabulary, sdsat_vllm.models
                                         the `sdsat` block; the metrics' names and definitions; the model
                                         hub (pins, download, convert, cache)
    1  sdsat_vllm.training               SAT setup, layout, data, make-data, trainer, export
    2  sdsat_vllm.adapters               the shipped adapters and the models they rebuild (needs 0 and 1)
    3  sdsat_vllm.decoding, sdsat_vllm.kernels
                                         the exact engine on transformers, and its kernels
    4  sdsat_vllm.vllm_plugin            the vLLM integration (proposer, patches, metrics)
    5  sdsat_vllm.bench, sdsat_vllm.demo, sdsat_vllm.cli
                                         what users and the benchmarks run

A module may import modules of its own layer and of the layers below, never of a layer above. The
first test reads every import of every module with `ast`, the ones inside functions included
(that is where the package keeps its heavy and its upward-looking imports, so importing a module
would not show them); the second imports the lower layers in a fresh interpreter and looks at what
got loaded. A new module outside the prefixes below fails the first test until it is given a layer.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sdsat_vllm"

LAYERS: dict[str, int] = {
    "sdsat_vllm": 0,  # the package root (its __init__) only
    "sdsat_vllm.config": 0,
    "sdsat_vllm.datastore": 0,
    "sdsat_vllm.metrics_vocabulary": 0,
    "sdsat_vllm.models": 0,
    "sdsat_vllm.training": 1,
    "sdsat_vllm.adapters": 2,
    "sdsat_vllm.decoding": 3,
    "sdsat_vllm.kernels": 3,
    "sdsat_vllm.vllm_plugin": 4,
    "sdsat_vllm.bench": 5,
    "sdsat_vllm.demo": 5,
    "sdsat_vllm.cli": 5,
}

# Upward imports that exist today in files outside this change's reach, each with why and what
# removes it. The test fails when one of them is gone, so that its entry is deleted with it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def package_files() -> dict[str, Path]:
    """Module name -> source file, for the package and for kernels/ (installed as sdsat_vllm.kernels)."""
    out = {}
    for base, prefix in ((ROOT / "sdsat_vllm", PACKAGE), (ROOT / "kernels", f"{PACKAGE}.kernels")):
        for f in sorted(base.rglob("*.py")):
            parts = f.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((prefix, *parts))] = f
    return out


def layer_of(module: str) -> int | None:
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    best = None
    for prefix, layer in LAYERS.items():
        if prefix != PACKAGE and (module == prefix or module.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported sdsat_vllm module, line) for every import statement in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import name`: the submodule pkg.name when it is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")]
    return found


def test_every_module_has_a_layer_and_imports_only_downwards():
    files = package_files()
    assert "sdsat_vllm.models.resolve" in files and "sdsat_vllm.cli" in files  # the walk sees the package
    known = set(files)
    unplaced = [m for m in files if layer_of(m) is None]
    assert not unplaced, f"modules without a layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"
    upward, seen_known = [], set()
    for module, path in files.items():
        for target, line in imports_of(module, path, known):
            if layer_of(target) is None:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}, which has no layer")
            elif layer_of(target) > layer_of(module):
                key = next((k for k in KNOWN_UPWARD if module == k[0] and (target + ".").startswith(k[1] + ".")),
                           None)
                if key:
                    seen_known.add(key)
                    continue
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {layer_of(module)}) imports "
                              f"{target} (layer {layer_of(target)})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)
    stale = set(KNOWN_UPWARD) - seen_known
    assert not stale, f"these known upward imports are gone; delete their KNOWN_UPWARD entries: {sorted(stale)}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """Negative control: an upward import inside a function, written relatively, is found."""
    f = tmp_path / "resolve.py"
    f.write_text("def f():\n    from ...adapters import SHIPPED\n    from ... import training\n")
    got = imports_of("sdsat_vllm.models.sub.resolve", f, {"sdsat_vllm.training", "sdsat_vllm.adapters"})
    assert got == [("sdsat_vllm.adapters", 2), ("sdsat_vllm.training", 3)]
    assert layer_of("sdsat_vllm.models.sub.resolve") == 0 < layer_of("sdsat_vllm.adapters")


def _loaded_after_import(modules: list[str]) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layer", [0, 1, 2], ids=["config+models", "training", "adapters"])
def test_importing_a_layer_loads_nothing_above_it(layer):
    mods = [m for m in package_files() if layer_of(m) == layer]
    assert mods
    loaded = _loaded_after_import(mods)
    above = [m for m in loaded if (m == PACKAGE or m.startswith(PACKAGE + ".")) and (layer_of(m) or 0) > layer]
    assert not above, f"importing layer {layer} loaded higher layers: {above}"
    if layer in (0, 2):  # the model hub and the adapters are light: no torch, no transformers, no vLLM
        heavy = [m for m in ("torch", "transformers", "vllm", "gguf") if m in loaded]
        assert not heavy, f"importing layer {layer} loaded {heavy}"
