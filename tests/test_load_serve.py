"""The pure parts of benchmarks/load_serve.py (the load test of `vllm serve` with SDSAT), without vLLM:
the request mix, the openai call arguments, percentiles, the RSS bound, the answer checks, the greedy
comparison, and the server wrapper's process handling on a stand-in server (a tiny HTTP server that
leaves children behind). The real servers run in tests/vllm_plugin/test_vllm_plugin_load.py (slow)."""

from __future__ import annotations

import json
import random
import sys
import time

import pytest
from benchmark_scripts import load_benchmark



@pytest.fixture(scope="module")
def ls():
    return load_benchmark("load_serve")


ALL_KINDS = {"completions", "chat", "stream", "no-stream", "greedy", "sampled", "n>1", "stop-greedy", "stop-sampled",
             "logprobs-completions", "logprobs-chat", "json-greedy", "json-sampled", "expected-400", "seeded"} | {
    f"{a}-{s}-{g}" for a in ("completions", "chat") for s in ("stream", "no-stream") for g in ("greedy", "sampled")}


@pytest.mark.parametrize("num,cap", [(16, 24), (200, 256), (40, 8)])
def test_mix_is_deterministic_and_covers_every_kind(ls, num, cap):
    a = ls.build_mix(num, seed=3, max_tokens_cap=cap, sat_id=99)
    assert a == ls.build_mix(num, seed=3, max_tokens_cap=cap, sat_id=99)
    assert a != ls.build_mix(num, seed=4, max_tokens_cap=cap, sat_id=99)
    assert [r["index"] for r in a] == list(range(num))
    assert set(ls.mix_counts(a)) == ALL_KINDS
    tokens = [r["max_tokens"] for r in a]
    assert min(tokens) == 1 and max(tokens) == cap and all(1 <= t <= cap for t in tokens)
    for r in a:
        if r["temperature"] == 0:
            assert r["n"] == 1 and r["seed"] is None
        else:
            assert r["temperature"] == ls.SAMPLED_TEMPERATURE and 1 <= r["n"] <= 3 and r["seed"] is not None
        if r["json"]:
            assert r["stop"] is None and r["max_tokens"] >= min(48, cap)
    bad = [r for r in a if r["expect"]]
    assert [r["index"] for r in bad] == [num - 2, num - 1]
    assert bad[0]["extra"] == {"allowed_token_ids": [99]} and bad[1]["extra"] == {"logprob_token_ids": [99]}
    assert all(r["expect"] == {"sdsat": 400} and r["temperature"] == 0 and not r["stream"] for r in bad)
    json.dumps(a)  # plain data: goes into the report as it is


def test_mix_options(ls):
    a = ls.build_mix(64, seed=1, max_tokens_cap=32, sat_id=7)
    b = ls.build_mix(64, seed=1, max_tokens_cap=32, sat_id=7, sampled_seeds=False)
    assert all(r["seed"] is None for r in b)
    assert [{**r, "seed": None} for r in a] == b  # the same draw otherwise
    assert not any(r["expect"] for r in ls.build_mix(64, seed=1, max_tokens_cap=32))  # no SAT id: no 400 cases
    assert sum(bool(r["expect"]) for r in ls.build_mix(64, seed=1, max_tokens_cap=32, sat_id=7, expected_400=1)) == 1
    small = ls.build_mix(3, seed=0, max_tokens_cap=5, sat_id=7)
    assert len(small) == 3 and not any(r["expect"] for r in small)
    custom = ls.build_mix(16, completion_prompts=["c1", "c2"], chat_prompts=["h1"], max_tokens_cap=16)
    for r in custom:
        if not r["json"]:
            assert r["prompt"] in (("c1", "c2") if r["api"] == "completions" else ("h1",))
    with pytest.raises(ValueError):
        ls.build_mix(0)


def test_request_kwargs(ls):
    base = dict(index=0, api="completions", stream=True, temperature=0.8, seed=5, n=2, max_tokens=9,
                stop=["."], logprobs=3, json=True, prompt="p", extra={"x": 1}, expect={})
    method, kw = ls.request_kwargs(base, "m")
    assert method == "completions"
    assert kw["prompt"] == "p" and kw["logprobs"] == 3 and kw["seed"] == 5 and kw["n"] == 2 and kw["stop"] == ["."]
    assert kw["stream"] is True and kw["stream_options"] == {"include_usage": True}
    assert kw["extra_body"]["x"] == 1 and kw["extra_body"]["response_format"]["json_schema"]["schema"] == ls.JSON_SCHEMA
    method, kw = ls.request_kwargs({**base, "api": "chat", "stream": False, "seed": None}, "m")
    assert method == "chat" and kw["messages"] == [{"role": "user", "content": "p"}]
    assert kw["logprobs"] is True and kw["top_logprobs"] == 3 and kw["response_format"]["type"] == "json_schema"
    assert "seed" not in kw and "stream" not in kw and kw["extra_body"] == {"x": 1}


def test_percentile_matches_numpy(ls):
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in (1, 2, 3, 10, 101):
        v = [rng.random() * 10 for _ in range(n)]
        for q in (0, 1, 50, 90, 99, 100):
            assert ls.percentile(v, q) == pytest.approx(float(np.percentile(v, q)))
    assert ls.percentile([], 50) is None
    assert ls.percentile([3, 1, 2], 50) == 2
    with pytest.raises(ValueError):
        ls.percentile([1], 101)


def test_rss_check(ls):
    mib = 1024 * 1024
    ok = ls.rss_check(1000 * mib, 1400 * mib, 512)
    assert ok == dict(before_mib=1000.0, after_mib=1400.0, growth_mib=400.0, bound_mib=512, ok=True)
    assert not ls.rss_check(1000 * mib, 1513 * mib, 512)["ok"]
    assert ls.rss_check(1000 * mib, 1512 * mib, 512)["ok"]  # the bound itself is allowed
    assert ls.rss_check(1000 * mib, 900 * mib, 0)["ok"]  # shrinking is fine
    assert not ls.rss_check(None, 900 * mib, 512)["ok"]  # not measured: a failed check


def _res(texts, finish, tokens=3, tops=None):
    return dict(ok=True, texts=texts, finish_reasons=finish, completion_tokens=tokens,
                top_logprobs=tops or [[] for _ in texts])


def test_answer_problems(ls):
    r = dict(n=1, stop=["."], json=False, logprobs=None, max_tokens=4)
    assert ls.answer_problems(r, _res(["abc"], ["stop"]), ("<S>",)) == []
    assert "stop string" in ls.answer_problems(r, _res(["a.b"], ["stop"]), ())[0]
    assert "SAT" in ls.answer_problems(r, _res(["a<S>"], ["length"]), ("<S>",))[0]
    assert "n * max_tokens" in ls.answer_problems(r, _res(["abc"], ["length"], tokens=5), ())[0]
    assert "choices" in ls.answer_problems({**r, "n": 2}, _res(["a"], ["stop"]), ())[0]
    assert "finish_reason" in ls.answer_problems(r, _res(["a"], [None]), ())[0]
    assert ls.answer_problems(r, _res(["a"], ["stop"], tokens=None), ()) == ["no usage"]
    j = dict(n=1, stop=None, json=True, logprobs=None, max_tokens=48)
    assert ls.answer_problems(j, _res(['{"answer": "yes", "confidence": "low"}'], ["stop"]), ()) == []
    assert ls.answer_problems(j, _res(['{"answer": "ye'], ["length"]), ()) == []  # cut by max_tokens: not checked
    assert "not JSON" in ls.answer_problems(j, _res(['{"answer": "ye'], ["stop"]), ())[0]
    assert ls.answer_problems(j, _res(['{"answer": "maybe", "confidence": "low"}'], ["stop"]), ())
    lp = dict(n=1, stop=None, json=False, logprobs=2, max_tokens=4)
    assert ls.answer_problems(lp, _res(["ab"], ["length"], tops=[[["a", "b"], ["c", "d", "e"]]]), ()) == []
    assert "top logprobs" in ls.answer_problems(lp, _res(["ab"], ["length"], tops=[[["a", "b", "c", "d"]]]), ())[0]
    assert "no logprobs" in ls.answer_problems(lp, _res(["ab"], ["length"], tops=[[]]), ())[0]
    assert "SAT" in ls.answer_problems(lp, _res(["ab"], ["length"], tops=[[["a", "<S>"]]]), ("<S>",))[0]


def test_json_schema_fallback_validator(ls, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # as if not installed
    s = ls.JSON_SCHEMA
    assert ls.validate_json_schema({"answer": "no", "confidence": "high"}, s) is None
    assert "missing" in ls.validate_json_schema({"answer": "no"}, s)
    assert "not in" in ls.validate_json_schema({"answer": "x", "confidence": "high"}, s)
    assert "unexpected" in ls.validate_json_schema({"answer": "no", "confidence": "high", "z": 1}, s)
    assert ls.validate_json_schema([1], s) == "not an object"


def test_greedy_mismatches_and_summary(ls):
    reqs = [dict(index=i, api="completions", stream=False, temperature=t, n=1, max_tokens=4, stop=None,
                 logprobs=None, json=False, expect=e) for i, (t, e) in
            enumerate([(0, {}), (0, {}), (0.8, {}), (0, {"sdsat": 400}), (0, {})])]
    refs = {0: _res(["a"], ["stop"]), 1: _res(["b"], ["length"]), 4: _res(["d"], ["stop"])}
    got = {0: {**_res(["a"], ["stop"]), "wall_s": 1.0}, 1: {**_res(["bx"], ["length"]), "wall_s": 2.0},
           2: {**_res(["zz"], ["length"]), "wall_s": 3.0},
           3: dict(ok=False, status=400, error_type="HTTP 400", error="only SAT token ids", wall_s=0.1),
           4: dict(ok=False, status=500, error_type="HTTP 500", error="boom", wall_s=0.2)}
    m = ls.greedy_mismatches(reqs, got, refs)
    assert [x["index"] for x in m] == [1] and m[0]["common_prefix_chars"] == 1
    s = ls.pass_summary(reqs, got, 10.0, (), "sdsat")
    assert s["ok"] == 3 and s["expected_errors_ok"] == 1 and s["errors"] == {"HTTP 500": 1} and s["num_errors"] == 1
    assert s["completion_tokens"] == 9 and s["tokens_per_s"] == 0.9 and s["latency_p50_s"] == 2.0
    # on the plain server the same 400 is not expected: an error
    assert ls.pass_summary(reqs, got, 10.0, (), "plain")["errors"] == {"HTTP 400": 1, "HTTP 500": 1}


FAKE_SERVER = r'''
import http.server, os, signal, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
# a child in the server's process group, and one that left it (its own session): both must be ended
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
time.sleep(0.5)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
mode = os.environ.get("FAKE_MODE", "clean")
def on_int(*_):
    if mode == "clean":
        os._exit(0)
    # "stuck": ignore SIGINT (the wrapper must SIGKILL the group)
signal.signal(signal.SIGINT, on_int)
srv.serve_forever()
'''


@pytest.mark.parametrize("mode", ["clean", "stuck"])
@pytest.mark.parametrize("no_psutil", [False, True])
def test_server_stop_leaves_no_process(ls, tmp_path, monkeypatch, mode, no_psutil):
    if no_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # the /proc fallback
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    monkeypatch.setattr(ls, "vllm_command", lambda: [sys.executable, str(script)])
    env = {**__import__("os").environ, "FAKE_MODE": mode}
    srv = ls.Server("fake", tmp_path, [], tmp_path / "fake.log", env)
    try:
        srv.start(timeout=30)
        tree = srv.tree()
        assert len(tree) == 3, tree  # the server and both children
        assert srv.rss() > 0
    except BaseException:
        srv.stop(timeout=1)
        raise
    t0 = time.monotonic()
    st = srv.stop(timeout=2)
    assert st["leftover"] == [] and set(tree) <= set(st["seen"])
    assert not any(ls.alive(p) for p in tree)
    if mode == "clean":
        assert st["clean"] and st["returncode"] == 0
    else:
        assert not st["clean"] and "did not stop" in st["problem"]
    assert time.monotonic() - t0 < 20


def test_log_tracebacks(ls, tmp_path):
    log = tmp_path / "log"
    log.write_text("INFO start\nINFO [shutdown] API server\nTraceback (most recent call last):\nEngineDeadError\n")
    assert ls.log_tracebacks(log) == (False, True)
    log.write_text("Traceback (most recent call last):\nRuntimeError\nINFO [shutdown] x\n")
    assert ls.log_tracebacks(log) == (True, False)
    assert ls.log_tracebacks(tmp_path / "missing") == (False, False)
