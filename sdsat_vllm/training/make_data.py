"""`sdsat make-data`: self-distilled SAT training data, the served model's own completions.

Drafts are accepted when they match what the model itself would write, so the SATs learn best
from text the model wrote (BiTA, Medusa, EAGLE-3 and "Your LLM Knows the Future" all train on
the target's own outputs; the stdlib corpus put the shipped adapter's drafts at .40 acceptance).

Prompts come from real code, cut where a user would stop typing and ask for the rest:
- `def_doc`: a function's signature and docstring (methods are dedented),
- `def_body`: the same plus its first 1..3 body statements (a cut inside a function),
- `class_doc`: a class statement and its docstring,
taken from Python files (default: the interpreter's stdlib source) or given as a prompts JSONL
(rows with a "prompt" string). Each prompt is sent completion-style (the code as it is) or, for
a fraction of them, chat-style (the model's chat template around "Complete this code"), since
users send both. `builtin:questions` (and `builtin:questions-2`, other topics) adds general
questions answered in prose (`training/questions.py`), always sent as the user's message in the chat template: the text where
the drafts are the SATs' alone, since nothing in the context predicts the answer. Completions are generated greedily and optionally sampled, by vLLM where it is
installed (batched: ~140 tokens/s at batch 32 on a 2-core CPU for SmolLM2-135M) and by
transformers otherwise.

Output: OUT (training rows) and OUT with `.heldout.jsonl` (rows whose prompt file falls in the
stable held-out hash split of `data.is_heldout`, so evaluation never sees a training file). Each
row is `{"text": prompt + completion, ...provenance}`; `sdsat train --sources OUT
--heldout-sources OUT.heldout.jsonl` reads the "text" field. Rows are appended in chunks, each
with its key (prompt, style, sample, sampling settings, model sha256): running the same command
again skips what is done (resume), and a new prompt source or sample count appends.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from .data import FORBIDDEN_MARKERS, corpus_files, is_heldout, is_jsonl, jsonl_rows, stdlib_root
from .questions import BUILTIN_QUESTIONS, QUESTION_FRAME, QUESTION_SETS, builtin_questions

CHAT_INSTRUCTION = "Complete this Python code. Answer with the code only.\n\n```python\n{prompt}```"
PROMPT_KINDS = ("def_doc", "def_body", "class_doc", "question")
ROW_FORMAT = 1


@dataclass(slots=True, frozen=True)
class MakeDataConfig:
    model: str = "smollm2-135m"  # the served (base) model whose completions we learn
    out: str = "data/self_distill.jsonl"
    sources: tuple[str, ...] = ()  # .py files/dirs, prompt JSONL files, builtin:questions(-2); empty: the stdlib
    max_prompts: int | None = 2000
    max_prompt_chars: int = 1500
    chat_fraction: float = 0.25  # share of prompts sent through the chat template
    greedy: bool = True
    num_samples: int = 0  # sampled completions per prompt, besides the greedy one
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    heldout_fraction: float = 0.05
    seed: int = 0
    backend: str = "auto"  # auto | vllm | transformers
    batch_size: int = 32
    chunk_prompts: int = 64  # rows are written (and resume points made) every this many prompts
    max_model_len: int = 2048

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        for s in self.sources:
            if any(m in s.lower() for m in FORBIDDEN_MARKERS):
                raise ValueError(f"{s} looks like HumanEval, the evaluation set: never train on it")
        if self.backend not in ("auto", "vllm", "transformers"):
            raise ValueError(f"backend must be auto, vllm or transformers, got {self.backend!r}")
        if not 0.0 <= self.chat_fraction <= 1.0:
            raise ValueError(f"chat_fraction must be in [0, 1], got {self.chat_fraction}")
        if not self.greedy and self.num_samples < 1:
            raise ValueError("nothing to generate: --no-greedy needs --num-samples >= 1")
        if self.num_samples < 0 or self.max_tokens < 1 or self.batch_size < 1 or self.chunk_prompts < 1:
            raise ValueError("num_samples must be >= 0; max_tokens, batch_size, chunk_prompts >= 1")
        if self.temperature <= 0 and self.num_samples:
            raise ValueError("sampled completions need temperature > 0")
        if not self.out.endswith(".jsonl"):
            raise ValueError(f"--out must be a .jsonl file, got {self.out!r}")

    @property
    def heldout_out(self) -> str:
        return self.out[: -len(".jsonl")] + ".heldout.jsonl"


@dataclass(slots=True, frozen=True)
class Prompt:
    text: str  # the code the model continues, or a question (kind "question")
    source: str  # "stdlib:json/decoder.py:123", "file:/path.py:7", "prompts:/file.jsonl:4", "builtin:questions:17"
    kind: str  # def_doc | def_body | class_doc | given | question
    split_key: str  # what the held-out split hashes (the prompt's file)


@dataclass(slots=True, frozen=True)
class Job:
    prompt: Prompt
    style: str  # completion | chat
    sample: int  # 0: greedy; 1..: sampled
    input_text: str  # what the model is given (chat: the templated conversation)

    @property
    def greedy(self) -> bool:
        return self.sample == 0


# ----------------------------------------------------------------------------------------------
# prompts


def _segment(lines: list[str], start: int, end: int, indent: int) -> str:
    """Source lines start..end (1-based, inclusive) with the statement's own indentation removed."""
    seg = lines[start - 1:end]
    out = [ln[indent:] if ln[:indent].strip() == "" else ln.lstrip() for ln in seg]
    return "\n".join(out).rstrip() + "\n"


def prompts_from_python(source: str, label: str, split_key: str, rng: random.Random) -> Iterator[Prompt]:
    """Natural cut points of one Python file (nothing if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        body = node.body
        if not body or ast.get_docstring(node, clean=False) is None:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        doc_end = body[0].end_lineno
        is_class = isinstance(node, ast.ClassDef)
        yield Prompt(_segment(lines, start, doc_end, node.col_offset), f"{label}:{start}",
                     "class_doc" if is_class else "def_doc", split_key)
        if not is_class and len(body) > 2:
            k = rng.randint(1, min(3, len(body) - 2))
            yield Prompt(_segment(lines, start, body[k].end_lineno, node.col_offset), f"{label}:{start}",
                         "def_body", split_key)


def prompts_from_jsonl(path: Path) -> list[Prompt]:
    """Rows {"prompt": str, optional "source"}; a malformed file is refused whole, before any work."""
    out = []
    for i, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path}:{i}: a prompts JSONL row needs a non-empty 'prompt' string")
        tag = " ".join(str(row.get(k, "")) for k in ("task_id", "source")).lower()
        if any(m in tag for m in FORBIDDEN_MARKERS):
            raise ValueError(f"{path}:{i}: this prompt is from HumanEval, the evaluation set: never train on it")
        out.append(Prompt(row["prompt"], f"prompts:{path}:{i}", "given", f"{path}:{row.get('source', i)}"))
    return out


def prompts_from_questions(seed: int, source: str = BUILTIN_QUESTIONS) -> list[Prompt]:
    """A built-in set of prose questions, held out by topic."""
    return [Prompt(q, f"{source}:{i}", "question", f"questions/{topic}")
            for i, (q, topic) in enumerate(builtin_questions(seed, source))]


def collect_prompts(cfg: MakeDataConfig) -> list[Prompt]:
    """All prompts of the sources, deduplicated and shuffled (seeded), at most max_prompts."""
    file_sources = tuple(s for s in cfg.sources if s not in QUESTION_SETS)
    roots = [Path(s) for s in file_sources]
    std = stdlib_root()
    prompts = [p for s in QUESTION_SETS if s in cfg.sources for p in prompts_from_questions(cfg.seed, s)]
    for path in corpus_files(file_sources) if file_sources or not cfg.sources else []:
        if is_jsonl(path):
            prompts.extend(prompts_from_jsonl(path))
        elif path.suffix == ".py":
            # the split key is the path inside its source root: the same split wherever the root lies
            root = next((r for r in roots if r.is_dir() and path.is_relative_to(r)), None)
            if root is None and not roots:
                rel, label = path.relative_to(std).as_posix(), f"stdlib:{path.relative_to(std).as_posix()}"
            else:
                rel = path.relative_to(root).as_posix() if root else path.name
                label = f"file:{path.as_posix()}"
            rng = random.Random(f"{cfg.seed}:{rel}")
            prompts.extend(prompts_from_python(path.read_text(encoding="utf-8", errors="replace"), label, rel, rng))
    if not prompts and roots:
        raise ValueError(f"no prompts found in {cfg.sources}: give .py files (functions/classes with docstrings) "
                         "or a JSONL with a 'prompt' field per row")
    seen, unique = set(), []
    for p in prompts:
        if p.text not in seen and 0 < len(p.text) <= cfg.max_prompt_chars:
            seen.add(p.text)
            unique.append(p)
    random.Random(cfg.seed).shuffle(unique)
    return unique[: cfg.max_prompts] if cfg.max_prompts else unique


def chat_text(tokenizer, prompt: str, question: bool = False) -> str:
    """The conversation the model answers: a question as the user wrote it, code with CHAT_INSTRUCTION."""
    messages = [{"role": "user", "content": prompt if question else CHAT_INSTRUCTION.format(prompt=prompt)}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def make_jobs(prompts: list[Prompt], cfg: MakeDataConfig, tokenizer) -> list[Job]:
    has_template = getattr(tokenizer, "chat_template", None) is not None
    jobs = []
    for p in prompts:
        question = p.kind == "question"
        style_rng = random.Random(f"{cfg.seed}:style:{p.text}")
        # a question is always a chat turn (the frame the benchmark's norepeat set uses without a template)
        chat = has_template and (question or style_rng.random() < cfg.chat_fraction)
        text = (chat_text(tokenizer, p.text, question) if chat
                else QUESTION_FRAME.format(p.text) if question else p.text)
        samples = ([0] if cfg.greedy else []) + list(range(1, cfg.num_samples + 1))
        jobs.extend(Job(p, "chat" if chat else "completion", s, text) for s in samples)
    return jobs


# ----------------------------------------------------------------------------------------------
# rows and the output files


def sampling_settings(cfg: MakeDataConfig, job: Job) -> dict:
    if job.greedy:
        return {"temperature": 0.0, "max_tokens": cfg.max_tokens}
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "seed": job_seed(cfg, job)}


def job_seed(cfg: MakeDataConfig, job: Job) -> int:
    digest = hashlib.sha256(f"{cfg.seed}:{job.sample}:{job.input_text}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def job_key(cfg: MakeDataConfig, job: Job, model_sha: str | None) -> str:
    ident = [job.input_text, job.style, job.sample, sampling_settings(cfg, job), model_sha]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def read_done_keys(path: Path) -> set[str]:
    """Keys of the complete rows of an output file; a torn last line (a crash mid-write) is cut off."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    keys = set()
    for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            keys.add(row["key"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{i} is not a `sdsat make-data` row; refusing to append to it "
                             "(choose another --out)") from None
    return keys


def append_rows(path: Path, rows: list[dict]) -> None:
    """One write per chunk, flushed to disk: a crash leaves whole rows and at most one torn line."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


@dataclass(slots=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str


# ----------------------------------------------------------------------------------------------
# generators


class VLLMGenerator:
    """Batched generation with vLLM's `LLM.generate` (exactly what serving the model produces)."""

    name = "vllm"

    def __init__(self, model_dir: Path, cfg: MakeDataConfig):
        import vllm
        from vllm import LLM
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        self.version = f"vllm {vllm.__version__}"
        self.llm = LLM(model=str(model_dir), dtype="float32" if cpu else "auto", max_model_len=cfg.max_model_len,
                       max_num_seqs=cfg.batch_size, gpu_memory_utilization=0.3 if cpu else 0.8, seed=cfg.seed)
        self.cfg = cfg

    def generate(self, jobs: list[Job]) -> list[Completion]:
        from vllm import SamplingParams

        params = [SamplingParams(**sampling_settings(self.cfg, j)) for j in jobs]
        outs = self.llm.generate([j.input_text for j in jobs], params, use_tqdm=False)
        return [Completion(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason or "")
                for o in outs]

    def close(self) -> None:
        # stop the engine-core process now, not at garbage collection (training follows on this machine)
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()


class TransformersGenerator:
    """Fallback without vLLM: transformers `generate` (slow: one request at a time)."""

    name = "transformers"

    def __init__(self, model_dir: Path, cfg: MakeDataConfig, model=None, tokenizer=None):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.version = f"transformers {transformers.__version__}"
        self.tok = tokenizer or AutoTokenizer.from_pretrained(model_dir)
        self.model = model or AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        self.cfg = cfg

    def generate(self, jobs: list[Job]) -> list[Completion]:
        # one request at a time: no padding to get wrong, each sampled row with its own seed
        return [self._one(j) for j in jobs]

    def _one(self, job: Job) -> Completion:
        torch = self.torch
        ids = self.tok(job.input_text, return_tensors="pt", add_special_tokens=False).input_ids
        kw = dict(max_new_tokens=self.cfg.max_tokens, pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        if job.greedy:
            kw.update(do_sample=False)
        else:
            torch.manual_seed(job_seed(self.cfg, job))
            kw.update(do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        with torch.no_grad():
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0, ids.shape[1]:].tolist()
        eos = self.tok.eos_token_id
        finish = "stop" if eos is not None and gen and gen[-1] == eos else "length"
        if finish == "stop":
            gen = gen[:-1]
        return Completion(self.tok.decode(gen, skip_special_tokens=True), len(gen), finish)

    def close(self) -> None:
        pass


def pick_backend(cfg: MakeDataConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    try:
        import vllm  # noqa: F401
    except Exception:  # not installed or broken: the transformers engine always works
        return "transformers"
    return "vllm"


# ----------------------------------------------------------------------------------------------
# the job


def make_data(cfg: MakeDataConfig, model=None, tokenizer=None, log=print) -> dict:
    """Generate what is missing from cfg.out / its held-out file; returns counts.

    model/tokenizer may be given directly (tests pass tiny models; forces the transformers backend).
    """
    from ..config import write_json_atomic
    from ..models import gguf_sha256, resolve_model, sha256_file

    out, heldout = Path(cfg.out), Path(cfg.heldout_out)
    done = read_done_keys(out) | read_done_keys(heldout)  # refuses foreign files before any work
    prompts = collect_prompts(cfg)
    if model is None:
        model_dir = resolve_model(cfg.model)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        weights = model_dir / "model.safetensors"
        model_sha = gguf_sha256(model_dir) or (sha256_file(weights) if weights.is_file() else None)
    else:
        model_dir, model_sha = None, getattr(model.config, "_sdsat_test_sha", None)
    jobs = make_jobs(prompts, cfg, tokenizer)
    todo = [j for j in jobs if job_key(cfg, j, model_sha) not in done]
    log(f"make-data: {len(prompts)} prompts, {len(jobs)} completions, {len(jobs) - len(todo)} already in {out}")
    counts = {"prompts": len(prompts), "completions": len(jobs), "skipped": len(jobs) - len(todo), "written": 0,
              "heldout_written": 0, "generated_tokens": 0}
    if not todo:
        return counts
    backend = "transformers" if model is not None else pick_backend(cfg)
    gen = (VLLMGenerator(model_dir, cfg) if backend == "vllm"
           else TransformersGenerator(model_dir, cfg, model=model, tokenizer=tokenizer))
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"config": asdict(cfg), "model_sha256": model_sha, "generator": gen.version, "format": ROW_FORMAT}
    write_json_atomic(Path(str(out) + ".manifest.json"), manifest)
    t0 = time.time()
    step = cfg.chunk_prompts * (int(cfg.greedy) + cfg.num_samples)
    try:
        with tqdm(total=len(todo), desc="make-data", unit="completion") as bar:
            for i in range(0, len(todo), step):
                chunk = todo[i:i + step]
                comps = gen.generate(chunk)
                train_rows, heldout_rows = [], []
                for job, c in zip(chunk, comps):
                    row = {"text": job.input_text + c.text, "prompt": job.input_text, "completion": c.text,
                           "style": job.style, "prompt_kind": job.prompt.kind, "prompt_source": job.prompt.source,
                           "sample": job.sample, "sampling": sampling_settings(cfg, job), "model": cfg.model,
                           "model_sha256": model_sha, "generator": gen.version, "num_completion_tokens": c.num_tokens,
                           "finish_reason": c.finish_reason, "key": job_key(cfg, job, model_sha), "format": ROW_FORMAT}
                    split = is_heldout(Path(job.prompt.split_key), cfg.heldout_fraction)
                    (heldout_rows if split else train_rows).append(row)
                    counts["generated_tokens"] += c.num_tokens
                append_rows(out, train_rows)
                append_rows(heldout, heldout_rows)
                counts["written"] += len(train_rows)
                counts["heldout_written"] += len(heldout_rows)
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{counts['generated_tokens'] / (time.time() - t0):.0f}")
    finally:
        gen.close()
    counts["wall_s"] = time.time() - t0
    return counts


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    from .cli import _add_fields

    _add_fields(parser, MakeDataConfig, required=(), help={
        "sources": f"prompt sources: .py files or directories, prompts JSONL files, {' or '.join(QUESTION_SETS)} "
                   "(general questions answered in prose); default: the stdlib source"})


def run(args) -> int:
    from dataclasses import fields

    v = vars(args)
    try:
        cfg = MakeDataConfig(**{f.name: v[f.name] for f in fields(MakeDataConfig)})
        counts = make_data(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"sdsat make-data: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": cfg.out, "heldout": cfg.heldout_out, **counts}))
    return 0
