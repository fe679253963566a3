"""A stand-in for the few vLLM names the demo and the benchmarks use (`LLM`, `SamplingParams`,
`vllm.platforms.current_platform`), so that their runner, arithmetic and printing run in the fast
tests without an engine.

`install(monkeypatch)` puts it in `sys.modules` as `vllm` and swaps `time.perf_counter` for a fake
clock that only `FakeLLM` advances, so wall times, tokens/s and speedups are deterministic.
Generation is deterministic too: a prompt's token ids depend on the prompt only (the same with and
without speculation, as greedy decoding must be), and a speculative engine accepts drafts in a
fixed pattern and counts them into vLLM's spec-decode counters the way vLLM does (one draft per
forward that carried speculative tokens, accepted drafts a prefix). Every engine built is kept in
`FakeLLM.instances` with its constructor arguments, its generate calls and whether it was shut down.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class SamplingParams:
    def __init__(self, temperature=1.0, max_tokens=16, stop=None, top_p=1.0, seed=None, **kw):
        self.temperature, self.max_tokens, self.stop, self.top_p, self.seed = temperature, max_tokens, stop, top_p, seed
        self.extra = kw
        self.output_kind = None

    def clone(self):
        c = SamplingParams(self.temperature, self.max_tokens, self.stop, self.top_p, self.seed, **self.extra)
        c.output_kind = self.output_kind
        return c


class RequestOutputKind:
    CUMULATIVE, DELTA, FINAL_ONLY = 0, 1, 2


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, model, speculative_config=None, **kw):
        self.model, self.spec, self.kw = model, speculative_config, kw
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.shut_down = False
        self.n = int(speculative_config["num_speculative_tokens"]) if speculative_config else 0
        self.counters = dict(drafts=0, draft_tokens=0, accepted=0, per_pos=[0] * self.n)
        self.llm_engine = FakeEngine(self)
        CLOCK.now += 3.0  # start-up
        FakeLLM.instances.append(self)

    def _shutdown(self):
        self.shut_down = True

    def _decode(self, n_tokens: int) -> int:
        """Count one request's decode forwards; returns them."""
        if not self.spec:
            return n_tokens
        left, forwards, step, rejected = n_tokens - 1, 0, 0, False
        sdsat = self.spec.get("model") == "sdsat"
        while left > 0:
            offered = 0 if (sdsat and rejected) else (self.n if sdsat else 1 + step % self.n)
            accepted = min(step % (offered + 1) if offered else 0, left - 1)
            self.counters["drafts"] += 1
            self.counters["draft_tokens"] += offered
            self.counters["accepted"] += accepted
            for i in range(accepted):
                self.counters["per_pos"][i] += 1
            rejected = offered > 0 and accepted < offered
            left -= 1 + accepted
            forwards += 1
            step += 1
        return forwards + 1

    def complete(self, prompt, sampling):
        """(token ids, text, decode forwards) of one request: the ids depend on the prompt only."""
        n_tokens = sampling.max_tokens if not sampling.stop else max(1, min(sampling.max_tokens, len(prompt) % 23 + 3))
        ids = [(len(prompt) * 7 + 3 * i) % 97 for i in range(n_tokens)]
        text = "".join(chr(97 + t % 26) for t in ids)
        return ids, text, self._decode(n_tokens)

    @staticmethod
    def output(ids, text, request_id=None):
        return SimpleNamespace(request_id=request_id, finished=True,
                               outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason="length")])

    def generate(self, prompts, sampling, use_tqdm=True):
        self.calls.append((list(prompts), sampling))
        outs = []
        # as LLM.generate: one SamplingParams for all, or one per prompt
        per_prompt = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
        for p, sp in zip(prompts, per_prompt):
            ids, text, forwards = self.complete(p, sp)
            CLOCK.now += 0.01 * forwards + 0.002 * len(ids) * (1 + self.n)
            outs.append(self.output(ids, text))
        return outs

    def get_metrics(self):
        if not self.spec:
            return [SimpleNamespace(name="vllm:num_requests_running", value=0)]
        c = self.counters
        return [SimpleNamespace(name="vllm:spec_decode_num_drafts", value=c["drafts"]),
                SimpleNamespace(name="vllm:spec_decode_num_draft_tokens", value=c["draft_tokens"]),
                SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens", value=c["accepted"]),
                SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=list(c["per_pos"]))]


class FakeEngine:
    """`llm.llm_engine`: add_request / step as vLLM's LLMEngine, every request in flight advancing one
    decode forward a step; `max_in_flight` and `added` (request ids in order) are kept for the tests,
    and each request added is in the LLM's `calls` as a one-prompt generate."""

    def __init__(self, llm: FakeLLM):
        self.llm, self.engine_core = llm, SimpleNamespace(shutdown=llm._shutdown)
        self.running: dict[str, list] = {}  # request id -> [forwards left, ids, text]
        self.max_in_flight, self.added = 0, []

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def add_request(self, request_id, prompt, params):
        assert params.output_kind == RequestOutputKind.FINAL_ONLY
        self.llm.calls.append(([prompt], params))  # as a generate call of one prompt
        ids, text, forwards = self.llm.complete(prompt, params)
        self.running[request_id] = [forwards, ids, text]
        self.added.append(request_id)
        self.max_in_flight = max(self.max_in_flight, len(self.running))
        return request_id

    def step(self):
        CLOCK.now += 0.01 + 0.002 * len(self.running) * (1 + self.llm.n)
        done = []
        for rid, r in list(self.running.items()):
            r[0] -= 1
            if r[0] <= 0:
                done.append(self.llm.output(r[1], r[2], rid))
                del self.running[rid]
        return done


def install(monkeypatch) -> type[FakeLLM]:
    import time

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, SamplingParams
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: True)
    vllm.platforms = platforms
    sampling_params = types.ModuleType("vllm.sampling_params")
    sampling_params.RequestOutputKind = RequestOutputKind
    vllm.sampling_params = sampling_params
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_params)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(time, "perf_counter", CLOCK)
    monkeypatch.setattr(FakeLLM, "instances", [])
    CLOCK.now = 1000.0
    return FakeLLM


def write_model_dir(path, num_sat: int = 3, sat_id: int = 100):
    """The smallest directory the demo and bench_vllm read: config.json with the `sdsat` block."""
    import json
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "sdsat": {
        "sat_token_ids": [sat_id] * num_sat, "num_sat": num_sat}}))
    return path
