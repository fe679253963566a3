"""Faults under `vllm serve` with SDSAT (issue 11, point 3), judged by what follows each fault.

- SIGTERM under load: 8 streams in flight, SIGTERM to the server: it exits (code 0) within 60 s,
  every stream ends, and no process of its tree (API server, EngineCore, worker, resource tracker)
  is left. Without the patch `shutdown_ends_requests` it hangs until the clients give up (a vLLM
  race that plain vLLM 0.32 loses too, see patches.py).
- Client disconnects and aborted requests: with --max-num-seqs 2, two streams hold both slots,
  two more streams and a non-streaming request wait in the queue; all five clients close their
  sockets. Its own server with room for long requests (--max-model-len 1024, 900-token holders
  sampled at temperature 1.5, so drafts are seldom accepted whole): on a fast machine a 216-token
  greedy holder of the memorised passage finished before the queue filled (CI, 2026-12-02), so how
  long the slots stay held no longer depends on speed; where /metrics still never shows the full
  queue (a starved CI run, later that day) the scenario is set up again, up to 3 times, and a
  failure says what the gauges showed. The server's own gauges return to 0 running / 0 waiting /
  0 % KV cache, it generates (almost) nothing after the last close (a request that ran on would add
  up to its max_tokens), and the same greedy requests as before, more than the slots at once, come
  back equal and in time.
- max_model_len in the middle of a draft: --max-model-len 256; prompts that leave 1..10 tokens of
  room (a fixed-policy step schedules up to 1 + 2n = 9) with max_tokens past the end, prompts that
  end exactly at the limit, no max_tokens at all, streaming, and prompts with no room (400): each is
  answered exactly as a plain `vllm serve` of the same model and flags answers it (status, finish
  reason, token ids, text, error message), and the server serves on.

One plain and one SDSAT server for the module (plain first: one engine at a time), one more each
for the SIGTERM test, which runs first, and the disconnect test.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from benchmark_scripts import load_benchmark
from vllm_plugin_helpers import (FIXED, N_DRAFTS, VLLM_AVAILABLE, http_get, log_tail, mixed_prompts, passage,
                                 start_server, stop_server)

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]

SERVED = "m"
MAX_MODEL_LEN = 256
MAX_NUM_SEQS = 2
LONG_MODEL_LEN = 1024  # the disconnect test's server (the tiny test model's max_position_embeddings)
HOLD_TOKENS = 900  # what each of its five requests asks for: slots stay held whatever the machine's speed
HANG_UP_S = 1.0  # the five hang-ups took longer than this: the machine stalled, the scenario is set up again
# the fixed policy: drafts in flight at every step, so that the max_model_len cases meet every position of
# a 1 + 2n step (the adaptive default may send none to a request whose drafts do not pay)
SPEC = json.dumps(FIXED)


# ------------------------------------------------------------------------------------------ client side


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def post(base: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    """POST /v1/completions (not streaming): (status, JSON body)."""
    c = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=timeout)
    try:
        c.request("POST", "/v1/completions", json.dumps({"model": SERVED, **body}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def post_stream(base: str, body: dict, timeout: float = 60) -> tuple[int, list[dict]]:
    """POST /v1/completions with stream=true, read to the end: (status, the data events before [DONE])."""
    c = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=timeout)
    try:
        c.request("POST", "/v1/completions", json.dumps({"model": SERVED, "stream": True, **body}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return r.status, [json.loads(r.read())]
        events = []
        for line in r:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                events.append(json.loads(line[6:]))
        return r.status, events
    finally:
        c.close()


def open_stream(base: str, body: dict) -> http.client.HTTPConnection:
    """Send a streaming request and return its connection without reading anything."""
    c = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=60)
    c.request("POST", "/v1/completions", json.dumps({"model": SERVED, "stream": True, **body}),
              {"Content-Type": "application/json"})
    return c


def read_events(c: http.client.HTTPConnection, n: int) -> int:
    """Read n data events of an open stream (the response is kept on the connection)."""
    r = getattr(c, "_fault_response", None) or c.getresponse()
    c._fault_response = r
    got = 0
    while got < n:
        line = r.fp.readline()
        assert line, "the stream ended early"
        got += line.startswith(b"data: ")
    return got


def hang_up(c: http.client.HTTPConnection) -> None:
    """Close the client's socket as a client that goes away does (no more reading, no goodbye)."""
    if c.sock is not None:
        c.sock.close()
    c.close()


def answer(status: int, body: dict) -> tuple:
    """What a completion request got, comparable between servers: (status, finish reason, token ids,
    text) or (status, error message)."""
    if status != 200:
        return status, body.get("error", {}).get("message")
    ch = body["choices"][0]
    return status, ch["finish_reason"], ch.get("token_ids"), ch["text"]


def stream_answer(status: int, events: list[dict]) -> tuple:
    if status != 200:
        return answer(status, events[0])
    chs = [e["choices"][0] for e in events if e.get("choices")]
    ids = [t for c in chs for t in (c.get("token_ids") or [])]
    return status, chs[-1]["finish_reason"], ids, "".join(c["text"] for c in chs)


def metrics(base: str) -> dict[str, float]:
    """The server's own Prometheus gauges and counters this module reads (summed over label sets)."""
    text = http_get(base + "/metrics")[1]
    out = {}
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "generation_tokens_total",
                 "spec_decode_num_drafts_total", "spec_decode_num_accepted_tokens_total"):
        full = "vllm:" + name
        out[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith(full + "{") or line.startswith(full + " "))
    return out


def wait_for(base: str, cond, bound_s: float) -> tuple[bool, dict, float]:
    """Poll /metrics until cond(metrics) or bound_s passed: (met, last metrics, seconds waited)."""
    t0 = time.monotonic()
    while True:
        m = metrics(base)
        if cond(m):
            return True, m, time.monotonic() - t0
        if time.monotonic() - t0 > bound_s:
            return False, m, time.monotonic() - t0
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ the requests


def greedy_requests() -> list[dict]:
    """4 greedy requests of different lengths: twice the slots of --max-num-seqs 2."""
    return [dict(prompt=p, max_tokens=m, temperature=0, return_token_ids=True) for p, m in mixed_prompts()[:4]]


def run_greedy(base: str, timeout: float = 60) -> list[tuple]:
    """The greedy requests all at once; their answers in order."""
    with ThreadPoolExecutor(len(greedy_requests())) as ex:
        return [answer(*f.result()) for f in [ex.submit(post, base, r, timeout) for r in greedy_requests()]]


@pytest.fixture(scope="module")
def passage_ids(sdsat_model_dir) -> list[int]:
    """The memorised passage as token ids (523 tokens): prompts cut from it get whole drafts accepted."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(sdsat_model_dir)(passage() + "\n").input_ids
    assert len(ids) > MAX_MODEL_LEN + 50
    return ids


def boundary_cases(ids: list[int]) -> dict[str, tuple[bool, dict]]:
    """name -> (streaming?, request body): requests that run into max_model_len = 256."""
    cases = {}
    for room in range(1, 2 * N_DRAFTS + 3):  # 1..10 tokens left: every position of a 1 + 2n step
        cases[f"room{room}_past"] = (False, dict(prompt=ids[:MAX_MODEL_LEN - room], max_tokens=room + 7))
    for room in (3, 9):  # max_tokens ends exactly at max_model_len
        cases[f"room{room}_exact"] = (False, dict(prompt=ids[:MAX_MODEL_LEN - room], max_tokens=room))
    # max_tokens null: vLLM's own default (16 tokens here, well inside the 40 left)
    cases["no_max_tokens"] = (False, dict(prompt=ids[:MAX_MODEL_LEN - 40], max_tokens=None))
    cases["stream_room7"] = (True, dict(prompt=ids[:MAX_MODEL_LEN - 7], max_tokens=30))
    cases["stream_no_max_tokens"] = (True, dict(prompt=ids[:MAX_MODEL_LEN - 23], max_tokens=None))
    cases["no_room"] = (False, dict(prompt=ids[:MAX_MODEL_LEN], max_tokens=4))  # 400
    cases["too_long"] = (False, dict(prompt=ids[:MAX_MODEL_LEN + 40], max_tokens=4))  # 400
    for _, body in cases.values():
        body.update(temperature=0, return_token_ids=True, ignore_eos=True)  # every one runs to its limit
    return cases


def run_boundary(base: str, cases) -> dict[str, tuple]:
    out = {}
    for name, (stream, body) in cases.items():
        out[name] = stream_answer(*post_stream(base, body)) if stream else answer(*post(base, body))
    return out


# ------------------------------------------------------------------------------------------ servers


def _serve_args(spec: bool) -> list[str]:
    return (["--speculative-config", SPEC] if spec else []) + ["--served-model-name", SERVED,
                                                              "--max-num-seqs", str(MAX_NUM_SEQS)]


def _start(model_dir, spec: bool, log):
    """(process, base URL) of the module's server, plain or SDSAT; a failed start fails the test."""
    try:
        return start_server([str(model_dir), *_serve_args(spec)], log, max_model_len=MAX_MODEL_LEN)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def plain_answers(sdsat_model_dir, passage_ids, tmp_path_factory):
    """What a plain `vllm serve` (same model and flags, no speculation) answers, each request alone."""
    log = tmp_path_factory.mktemp("plain") / "server.log"
    proc, base = _start(sdsat_model_dir, False, log)
    try:
        out = {"greedy": [answer(*post(base, r)) for r in greedy_requests()],
               "boundary": run_boundary(base, boundary_cases(passage_ids))}
    finally:
        problem = stop_server(proc, log)
    assert problem is None, problem
    return out


@pytest.fixture(scope="module")
def server(sdsat_model_dir, plain_answers, tmp_path_factory):
    log = tmp_path_factory.mktemp("sdsat") / "server.log"
    proc, base = _start(sdsat_model_dir, True, log)
    yield {"base": base, "proc": proc, "log": log}
    problem = stop_server(proc, log)  # clean stop after the faults
    assert problem is None, problem


# ------------------------------------------------------------------------------------------ the faults


def test_sigterm_under_load_exits_and_leaves_no_process(sdsat_model_dir, tmp_path):
    ls = load_benchmark("load_serve")  # process_tree / alive: the load test's own process bookkeeping
    log = tmp_path / "server.log"
    try:
        # room for long streams (the tiny model's 1024 positions): in CI's full slow suite 6 of 8 streams of 400
        # tokens once ended before the last one had its first chunk (session 39), and the test needs all 8 in flight
        proc, base = start_server([str(sdsat_model_dir), "--speculative-config", SPEC, "--served-model-name", SERVED],
                                  log, max_model_len=1024)
    except RuntimeError as e:
        pytest.fail(str(e))
    p = passage()
    first_chunk = [threading.Event() for _ in range(8)]
    ended: dict[int, str] = {}
    chunks = [0] * 8

    def stream(i: int) -> None:
        c = open_stream(base, dict(prompt=p[i * 50:i * 50 + 40], max_tokens=960, temperature=0, ignore_eos=True))
        try:
            r = c.getresponse()
            for line in r:
                if line.startswith(b"data: "):
                    chunks[i] += 1
                    first_chunk[i].set()
            ended[i] = f"eof (HTTP {r.status})"
        except OSError as e:
            ended[i] = type(e).__name__
        finally:
            first_chunk[i].set()
            c.close()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(8)]
    tree: list[int] = []
    try:
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in first_chunk)
        # all 8 in flight
        assert not ended, f"streams ended before the signal: {ended}, data chunks {chunks}:\n{log_tail(log)}"
        tree = ls.process_tree(proc.pid)
        assert len(tree) >= 3, tree  # API server, EngineCore, its worker (and the resource tracker)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within 60 s of SIGTERM with 8 streams in flight "
                        f"(streams ended: {ended}):\n{log_tail(log)}")
        exit_s = time.monotonic() - t0
        for t in threads:
            t.join(10)
        assert len(ended) == 8, f"streams still open after the server exited: {sorted(set(range(8)) - set(ended))}"
        deadline = time.monotonic() + 5  # children die with the server; give the kernel a moment
        while [x for x in tree if ls.alive(x)] and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [x for x in tree if ls.alive(x)]
        assert not left, f"processes of the server left after it exited: {left}"
        assert rc == 0, f"exit code {rc}:\n{log_tail(log)}"
        print(f"SIGTERM with 8 streams in flight: exit in {exit_s:.2f} s, {len(tree)} processes, none left")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for x in tree:
            if ls.alive(x):
                os.kill(x, signal.SIGKILL)


def test_disconnects_and_aborts_free_their_slots(sdsat_model_dir, plain_answers, tmp_path):
    log = tmp_path / "server.log"
    try:
        proc, base = start_server([str(sdsat_model_dir), *_serve_args(True)], log, max_model_len=LONG_MODEL_LEN)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        _disconnects_and_aborts(base, log, plain_answers)
    finally:
        problem = stop_server(proc, log)
    assert problem is None, problem


def _disconnects_and_aborts(base: str, log, plain_answers) -> None:
    before = run_greedy(base)
    assert before == plain_answers["greedy"]  # and equal to plain vLLM, each request alone
    assert all(a[1] in ("stop", "length") for a in before)
    p = passage()
    # sampled flat, so that drafts are seldom accepted whole: about one token a step, 900 steps
    long = dict(temperature=1.5, seed=7, ignore_eos=True)

    def body(i: int) -> dict:
        return dict(prompt=p[i * 60:i * 60 + 30], max_tokens=HOLD_TOKENS, **long)  # ~15 prompt tokens: fits

    def queue_five():
        """Two streams that hold both slots (--max-num-seqs 2), read a little; then two streams and a
        non-streaming request that wait for a slot. (connections, queued seen, last metrics, max seen)."""
        a, b = open_stream(base, body(0)), open_stream(base, body(1))
        read_events(a, 2)
        read_events(b, 2)
        c, d = open_stream(base, body(2)), open_stream(base, body(3))
        e = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=60)
        e.request("POST", "/v1/completions", json.dumps({"model": SERVED, **body(4)}),
                  {"Content-Type": "application/json"})
        seen = {"running": 0.0, "waiting": 0.0}

        def full(m):
            seen["running"] = max(seen["running"], m["num_requests_running"])
            seen["waiting"] = max(seen["waiting"], m["num_requests_waiting"])
            return m["num_requests_running"] == 2 and m["num_requests_waiting"] == 3

        queued, m, _ = wait_for(base, full, 30)
        return (c, d, e, a, b), queued, m, seen  # the waiting ones first, then those holding the slots

    # The holders must still run when the queue is read: on a starved machine (CI, 2026-12-02: the five
    # ran to their end and /metrics never showed the queue) the scenario is set up again, at most 3 times;
    # each miss is reported with the most the gauges showed.
    misses = []
    for attempt in range(3):
        m0 = metrics(base)
        t_open = time.monotonic()
        conns, queued, m, seen = queue_five()
        t_queued = time.monotonic() - t_open
        for conn in conns:
            hang_up(conn)
        t_hung = time.monotonic() - t_open
        m_closed = metrics(base)
        # the hang-ups take milliseconds; in CI's full slow suite (session 39) they once took 6 s, in which the
        # tiny model wrote 3600 tokens: then what (b) counts below is the machine's stall, not the aborts.
        # And the queue seen must still be there when the clients hang up: in CI (session 42) /metrics showed it
        # with 74 tokens written, 8.9 s after the test opened the streams, and the read 0.01 s later, right after
        # the hang-ups, found all 4500 written: the view was seconds old (a stall between the server's answer and
        # the test's reading it), the five had already run to their end, and no abort was tried.
        # And the holders must still have most of their work ahead when the queue is seen: in session 44's slow
        # suite /metrics first showed it 3.0 s after the streams opened, with 1781 of the holders' 1800 tokens
        # written, so that the hang-ups met two requests about to end and the five's total (1785) broke (b)'s
        # bound below, though nothing ran on after the last close.
        ahead = m["generation_tokens_total"] - m0["generation_tokens_total"]
        stale = m_closed["generation_tokens_total"] - m["generation_tokens_total"]
        if queued and t_hung - t_queued < HANG_UP_S and stale < HOLD_TOKENS / 4 and ahead < HOLD_TOKENS / 2:
            break
        wait_for(base, lambda m: m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0, 60)
        misses.append(f"attempt {attempt + 1}: at most {seen['running']:.0f} running / {seen['waiting']:.0f} "
                      f"waiting seen, {m['generation_tokens_total'] - m0['generation_tokens_total']:.0f} tokens "
                      f"in {t_queued:.1f} s, hung up in {t_hung - t_queued:.1f} s, {stale:.0f} tokens written "
                      f"between the queue seen and the read after the hang-ups")
    assert len(misses) < 3, \
        "expected 2 running and 3 waiting requests, then hung up at once:\n" + "\n".join(misses)
    if misses:
        print("set up again:", "; ".join(misses))
    held_s = time.monotonic() - t_open
    print(f"queued seen at {t_queued:.2f} s ({m['generation_tokens_total'] - m0['generation_tokens_total']:.0f} "
          f"tokens), hung up at {t_hung:.2f} s, metrics read at {held_s:.2f} s "
          f"({m_closed['generation_tokens_total'] - m0['generation_tokens_total']:.0f} tokens)")

    # (a) the server's own view: nothing running or waiting, the KV cache empty, within 30 s
    drained, m1, drain_s = wait_for(base, lambda m: m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0
                                    and m["kv_cache_usage_perc"] == 0, 30)
    assert drained, f"slots not freed 30 s after 5 clients went away: {m1}\n{log_tail(log)}"
    # the aborts stopped the work: a request that ran on after its client left would add up to
    # HOLD_TOKENS tokens after the last close; the five asked for 5x that in all
    after_close = m1["generation_tokens_total"] - m_closed["generation_tokens_total"]
    total = m1["generation_tokens_total"] - m0["generation_tokens_total"]
    assert after_close < HOLD_TOKENS / 4 and total < 5 * HOLD_TOKENS / 4, (after_close, total)

    # (b) the same greedy requests, 4 at once on 2 slots: same answers, in time (leaked slots: they hang)
    t0 = time.monotonic()
    after = run_greedy(base, timeout=60)
    took = time.monotonic() - t0
    assert after == before
    assert took < 60, took
    assert metrics(base)["num_requests_running"] == 0
    print(f"5 clients gone after {held_s:.2f} s: drained in {drain_s:.2f} s, {after_close:.0f} tokens generated "
          f"after the last close ({total:.0f} for the five), the greedy requests then took {took:.2f} s")


def test_max_model_len_mid_draft_answers_as_plain_vllm(server, plain_answers, passage_ids):
    base = server["base"]
    cases = boundary_cases(passage_ids)
    m0 = metrics(base)
    got = run_boundary(base, cases)
    m1 = metrics(base)
    ref = plain_answers["boundary"]
    for name in cases:
        assert got[name] == ref[name], (name, got[name], ref[name])
    # clean results: the room that was left, finish_reason "length"; no room: a 400
    for room in range(1, 2 * N_DRAFTS + 3):
        status, finish, ids, _ = got[f"room{room}_past"]
        assert (status, finish, len(ids)) == (200, "length", room), (room, got[f"room{room}_past"])
    assert got["no_max_tokens"][:2] == (200, "length")
    assert got["stream_room7"][:2] == got["stream_no_max_tokens"][:2] == (200, "length")
    assert got["no_room"][0] == 400 and got["too_long"][0] == 400
    # drafts were in flight: the steps that reached the limit carried drafts, and some were accepted
    drafts = m1["spec_decode_num_drafts_total"] - m0["spec_decode_num_drafts_total"]
    accepted = m1["spec_decode_num_accepted_tokens_total"] - m0["spec_decode_num_accepted_tokens_total"]
    assert drafts > 0 and accepted > 0, (drafts, accepted)
    # the server serves on
    assert http_get(base + "/health")[0] == 200
    assert run_greedy(base) == plain_answers["greedy"]
