"""Shared pieces of the vLLM plugin tests: tiny model dirs, engine settings, the request cases."""

from __future__ import annotations

import gc
import importlib.util
import os
import signal
import socket
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path

from sdsat_vllm.vllm_plugin import shutdown_llm
from tiny_models import tiny_training_passage as passage  # the text the trained fixture memorised
from sdsat_vllm.vllm_plugin.cli import vllm_command

VLLM_AVAILABLE = importlib.util.find_spec("vllm") is not None

# tiny models, fp32, CPU: small KV space, low memory fraction, no compilation
ENGINE_KW = dict(max_model_len=512, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float32",
                 disable_log_stats=False, seed=0)
N_DRAFTS = 4  # the trained fixture has K=4
# The exactness tests pin the fixed policy, which drafts n tokens every step whatever their odds, so
# that every step goes through verification; the default (adaptive) policy has its own tests.
FIXED = {"model": "sdsat", "num_speculative_tokens": N_DRAFTS, "sdsat_policy": "fixed"}
ALLOWED_OTHERS = [50, 60, 70, 80, 90]  # allowed_token_ids beside a SAT id (baseline: these alone, plain vLLM)


def mixed_prompts() -> list[tuple[str, int]]:
    """8 (prompt, max_tokens) pairs of different lengths: requests start together and finish apart."""
    p = passage()
    starts = [0, 37, 90, 150, 233, 300, 410, 520]
    lengths = [60, 12, 140, 35, 80, 5, 100, 50]
    max_tokens = [48, 96, 8, 64, 24, 80, 40, 16]
    return [(p[s:s + n], m) for s, n, m in zip(starts, lengths, max_tokens)]


def repeat_prompt() -> str:
    """A prompt whose continuation repeats its own earlier text: lookup-backed drafts find it."""
    p = passage()
    return p[200:400] + " " + p[200:260]


def baseline_single_cases(p: str, sat: int):
    """(name, prompt, greedy SamplingParams kwargs): run alone, with and without SDSAT."""
    tok_prompt = {"prompt_token_ids": [5, 17, sat, sat, 42, 200, 222]}
    long_ids = {"prompt_token_ids": [200 + (i % 50) for i in range(500)]}
    return [
        ("sat_text", p[:40] + "<|sdsat_sat|>" + p[40:80], dict(max_tokens=24)),
        ("sat_ids", tok_prompt, dict(max_tokens=24)),
        ("near_max_len", long_ids, dict(max_tokens=64)),  # runs into max_model_len=512
        ("logprobs", p[100:160], dict(max_tokens=16, logprobs=3)),
    ]


def tp2_env() -> dict[str, str]:
    """Thread binding for two CPU workers (vLLM's auto binding wants one NUMA node per worker)."""
    import pytest
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        n = os.cpu_count() or 2
        if n < 2:
            pytest.skip("tensor_parallel_size=2 on CPU needs at least 2 cores")
        half = n // 2
        return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{half - 1}|{half}-{2 * half - 1}" if half > 1 else "0|1"}
    return {}


def make_tiny_sdsat_dir(path, num_sat: int = 3, seed: int = 0) -> Path:
    from tiny_models import make_tiny_model, save_model_dir

    from sdsat_vllm.training.sat_setup import add_sat_tokens

    model, tok = make_tiny_model(seed=seed)
    add_sat_tokens(model, tok, num_sat=num_sat)
    return save_model_dir(model, tok, path)


def make_tiny_plain_dir(path, seed: int = 0) -> Path:
    from tiny_models import make_tiny_model, save_model_dir

    model, tok = make_tiny_model(seed=seed)
    return save_model_dir(model, tok, path)


def shutdown(llm) -> None:
    """Stop an LLM's engine processes now (tests start several engines in one session)."""
    shutdown_llm(llm)
    gc.collect()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def spec_summary(llm):
    """vLLM's spec-decode counters of an LLM so far (subtract two to get a pass's)."""
    from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

    return from_llm_metrics(llm.get_metrics())


def greedy_batch(llm, idx=None) -> list[list[int]]:
    """Token ids of the mixed prompts (all, or those at idx) generated greedily as one batch."""
    from vllm import SamplingParams

    mp = mixed_prompts() if idx is None else [mixed_prompts()[i] for i in idx]
    res = llm.generate([p for p, _ in mp], [SamplingParams(temperature=0, max_tokens=m) for _, m in mp])
    return [list(r.outputs[0].token_ids) for r in res]


def sampling_distribution_check(sdsat_llm, sdsat_model_dir, prompt_ids=None, reference_dir=None,
                                temperature: float = 2.0) -> None:
    """Lossless sampling: the 2nd sampled token has the plain distribution. Reference: the exact
    next-token distribution from the model itself, computed with transformers.

    On its memorised passage the trained model is nearly deterministic at temperature 1, where any
    verifier looks right; at temperature 2 its top token has p ~ 0.8 and drafts of it are accepted
    only with that probability, so a verifier that over-accepts drafts moves the top token's
    frequency by > 5 standard errors (|z| stayed < 3.3 in 500 simulated correct runs).
    prompt_ids: token ids to prompt with instead of the passage; reference_dir: the model whose exact
    distribution is expected (default: sdsat_model_dir; a gated model's: its base); temperature:
    one at which that model's top second token has 0.2 < p < 0.95."""
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    from sdsat_vllm.vllm_plugin.metrics import from_llm_metrics

    def spec_summary(llm):
        return from_llm_metrics(llm.get_metrics())

    from vllm.inputs import TokensPrompt

    from sdsat_vllm.config import SDSATConfig

    n = 600
    tok = AutoTokenizer.from_pretrained(sdsat_model_dir)
    if prompt_ids is None:
        prompt = passage()[120:170]
        ids = tok(prompt, return_tensors="pt").input_ids
    else:
        prompt, ids = TokensPrompt(prompt_token_ids=list(prompt_ids)), torch.tensor([list(prompt_ids)])
    model = AutoModelForCausalLM.from_pretrained(reference_dir or sdsat_model_dir, dtype=torch.float32).eval()
    sat_ids = [i for i in SDSATConfig.from_pretrained(sdsat_model_dir).sat_id_set if i < model.config.vocab_size]
    # unseeded: n independent draws from the distribution under test
    before = spec_summary(sdsat_llm)
    # 4 tokens: drafts are cut to what a request can use (fit_to_room), and with 3 nothing after the
    # second token could be verified
    res = sdsat_llm.generate([prompt], SamplingParams(temperature=temperature, n=n, max_tokens=4))[0]
    drafts = spec_summary(sdsat_llm) - before
    assert 0 < drafts.num_accepted_tokens < drafts.num_draft_tokens  # both verifier branches ran
    seqs = [tuple(c.token_ids) for c in res.outputs]
    # exact P(t2 | prompt, t1) for the most common t1, compared with the empirical one
    t1, cnt = Counter(s[0] for s in seqs).most_common(1)[0]
    emp = Counter(s[1] for s in seqs if s[0] == t1)
    with torch.no_grad():
        logits = model(torch.cat([ids, torch.tensor([[t1]])], 1)).logits[0, -1]
    logits[sat_ids] = float("-inf")  # SATs are never sampled
    p = torch.softmax(logits / temperature, -1)
    top = int(p.argmax())
    p_top = p[top].item()
    assert cnt >= 100 and 0.2 < p_top < 0.95, (cnt, p_top)  # enough samples; a distribution worth testing
    z = (emp.get(top, 0) / cnt - p_top) / (p_top * (1 - p_top) / cnt) ** 0.5
    tv = 0.5 * sum(abs(emp.get(i, 0) / cnt - p[i].item()) for i in set(emp) | set(p.topk(20).indices.tolist()))
    assert abs(z) < 4.5 and tv < 0.2, (z, tv, cnt, p_top)


# ---------------------------------------------------------------- `vllm serve` as a user types it

def serve_args(max_model_len: int = 512) -> list[str]:
    return ["--host", "127.0.0.1", "--max-model-len", str(max_model_len), "--enforce-eager", "--dtype", "float32",
            "--gpu-memory-utilization", "0.3"]


SERVE_ARGS = serve_args()




def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def log_tail(path: Path, n: int = 60) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


def machine_state() -> str:
    """What a stuck start-up needs explaining: memory, /dev/shm and the processes still running."""
    mem = {k: v.strip() for k, v in (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())}
    shm = subprocess.run(["df", "-h", "/dev/shm"], capture_output=True, text=True).stdout.strip()
    ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,etime,time,rss,args", "--sort=-rss"], capture_output=True,
                        text=True).stdout.splitlines()[:25]
    return "\n".join([f"MemAvailable {mem.get('MemAvailable')}, SwapFree {mem.get('SwapFree')}", shm, *ps])


def _start_once(cmd: list[str], port: int, log: Path, env: dict[str, str], timeout: float):
    """(process, None) once /health answers, or (None, why) after a timeout; raises if it exits."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if http_get(base + "/health")[0] == 200:
                return proc, None
        except OSError:
            pass
        if time.time() > deadline:
            break
        time.sleep(1)
    # Not up in time: faulthandler (PYTHONFAULTHANDLER below) writes every thread's stack to the log
    # on SIGABRT, so the message says where it was stuck, not only that it was.
    state = machine_state()
    proc.send_signal(signal.SIGABRT)
    time.sleep(3)
    _kill_group(proc)
    return None, f"server did not come up in {timeout:.0f} s:\n{log_tail(log, 120)}\n--- machine:\n{state}"


def _kill_group(proc) -> None:
    """SIGKILL whatever is left of a server's session (engine-core and worker processes included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 400,
                 max_model_len: int = 512):
    """`vllm serve ARGS` on a free loopback port; returns (process, base URL) once /health answers.
    Raises RuntimeError with the log's tail if it exits or does not come up in time.

    A server that has printed nothing at all when the time is up never reached vLLM's first log line
    (seen once in CI, 400 s of silence, not reproduced here): that is tried once more, with the first
    try's stacks and machine state given as a warning; a server that printed and then stuck fails."""
    env = {**(env or vllm_env()), "PYTHONFAULTHANDLER": "1"}
    for attempt in (1, 2):
        port = free_port()
        cmd = vllm_command() + ["serve", *args, "--port", str(port)] + serve_args(max_model_len)
        proc, why = _start_once(cmd, port, log, env, timeout)
        if proc is not None:
            return proc, f"http://127.0.0.1:{port}"
        silent = not _printed_before_abort(log)
        if attempt == 2 or not silent:
            raise RuntimeError(why)
        warnings.warn(f"vllm serve printed nothing in {timeout:.0f} s; starting it once more. {why}")


def _printed_before_abort(log: Path) -> bool:
    """Whether the server wrote anything of its own (the faulthandler dump we asked for does not count)."""
    text = Path(log).read_text(errors="replace")
    return bool(text.split("Fatal Python error: Aborted")[0].strip())


def stop_server(proc, log: Path) -> str | None:
    """SIGINT, then wait: None on a clean stop (exit code 0, no traceback), else what went wrong.
    Whatever the server left running in its session is killed after, so it cannot slow later tests."""
    proc.send_signal(signal.SIGINT)  # no-op if it died already: then its exit code tells
    try:
        rc = proc.wait(90)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return f"the server did not stop within 90 s of SIGINT:\n{log_tail(log)}"
    _kill_group(proc)
    tail = log_tail(log, 40)
    if rc != 0 or "Traceback" in tail:
        return f"exit code {rc}:\n{tail}"
    return None


def run_failing_server(args: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """`vllm serve ARGS` expected to stop at start-up: (exit code, output)."""
    cmd = vllm_command() + ["serve", *args, "--port", str(free_port())] + SERVE_ARGS
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env or vllm_env(), timeout=timeout)
    return proc.returncode, Path(log).read_text(errors="replace")
