"""Training text: the interpreter's standard library source by default, or any text/JSONL files
(JSONL may be gzipped: `.jsonl.gz`).

Files are split into train and held-out by a stable hash of their path (the same split on every
machine and every resume) unless the held-out files are named explicitly; they are tokenized with an
EOS between files, packed into rows of seq_len tokens, and cached next to the run so a resumed run
reads exactly the same tensor.

Row boundaries: a document that ended on its own (a source file, a completion that stopped) is
followed by EOS, which is a fair target (the model learns where answers end, as the base model
does). A JSONL row cut by its generator's token budget (`finish_reason: "length"`) ended
mid-thought: its separator is no target, or the trained model would learn to stop answers early.
No token of the next document is a target from context of the previous one (`TokenRows.label_ok`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".jsonl"}
# Evaluation data must never become training data.
FORBIDDEN_MARKERS = ("humaneval", "human_eval", "human-eval")


@dataclass(slots=True, frozen=True)
class DataConfig:
    sources: tuple[str, ...] = ()  # files or directories; empty means the stdlib source
    heldout_sources: tuple[str, ...] = ()  # evaluation files; when given, all of `sources` is trained on
    seq_len: int = 256
    heldout_fraction: float = 0.05
    max_train_tokens: int | None = 2_000_000  # tokenizing stops once the train split has this many
    max_heldout_tokens: int = 100_000
    shuffle_seed: int = 0  # order in which files are read (matters when max_train_tokens cuts the corpus)
    # keep only the first N tokens after a make-data row's prompt: the openings of answers, which serving
    # drafts with the least context and the SATs agree on least (results 32.2); None keeps whole answers
    max_answer_tokens: int | None = None

    def __post_init__(self):
        for name in ("sources", "heldout_sources"):  # JSON and argparse hand over lists
            object.__setattr__(self, name, tuple(str(p) for p in getattr(self, name)))
        if self.seq_len < 8:
            raise ValueError(f"seq_len must be >= 8, got {self.seq_len}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.max_answer_tokens is not None and self.max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens must be >= 1 (None: whole answers), got {self.max_answer_tokens}")
        for s in self.sources:
            if any(m in str(s).lower() for m in FORBIDDEN_MARKERS):
                raise ValueError(f"{s} looks like HumanEval, the evaluation set: never train on it")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(sources: tuple[str, ...]) -> list[Path]:
    """The text files in `sources` (files or directories); the stdlib source when empty."""
    roots = [Path(s) for s in sources] or [stdlib_root()]
    files: list[Path] = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"training data source {root} does not exist")
        if root.is_file():
            files.append(root)
            continue
        for p in sorted(root.rglob("*")):
            if (p.suffix in TEXT_SUFFIXES or is_jsonl(p)) and p.is_file() and "site-packages" not in p.parts:
                files.append(p)
    if not files:
        raise ValueError(f"no text files ({sorted(TEXT_SUFFIXES)}) found in {[str(r) for r in roots]}")
    return files


def is_heldout(path: Path, fraction: float) -> bool:
    """Stable split by path: the same files are held out on every machine and every run."""
    digest = hashlib.sha256(path.as_posix().split("/lib/", 1)[-1].encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def open_text(path: Path):
    """Text files, gzipped or not (shipped training data is stored gzipped)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded row) of each non-blank line; ValueError naming the line that is not JSON."""
    with open_text(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                yield i, row


@dataclass(slots=True, frozen=True)
class Text:
    text: str
    ended: bool = True  # False: cut by a token budget, so the EOS after it is no target
    prompt: str = ""  # the text's prefix that serving prefills (a make-data row's prompt): never drafted


@dataclass(slots=True, frozen=True)
class TokenRows:
    """Packed training rows and which of their tokens may be predicted from the tokens before them."""

    ids: torch.Tensor  # [N, L] token ids
    label_ok: torch.Tensor  # [N, L] bool: False for a cut document's separator and a document's first token
    # [N, L] bool: False for the tokens of a document's prompt, the text serving prefills and never drafts
    # (and for the separator after a document cut by its token budget); None: every token is drafted text
    drafted: torch.Tensor | None = None

    @classmethod
    def unbroken(cls, ids: torch.Tensor) -> "TokenRows":
        """Rows with no document boundary in them: every token may be predicted."""
        return cls(ids, torch.ones_like(ids, dtype=torch.bool))

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index) -> "TokenRows":
        return TokenRows(self.ids[index], self.label_ok[index],
                         None if self.drafted is None else self.drafted[index])


def read_texts(path: Path) -> list[Text]:
    if is_jsonl(path):
        texts = []
        with open_text(path) as f:
            for i, line in enumerate(f):
                if line.strip():
                    row = json.loads(line)
                    text = row.get("text", row.get("content")) if isinstance(row, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{i + 1}: a JSONL row needs a 'text' (or 'content') string field")
                    prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else ""
                    texts.append(Text(text, row.get("finish_reason") != "length",
                                      prompt if text.startswith(prompt) else ""))
        return texts
    with open_text(path) as f:
        return [Text(f.read())]


def pack_tokens(tokenizer, files: list[Path], seq_len: int, max_tokens: int | None, desc: str,
                max_answer_tokens: int | None = None) -> TokenRows:
    """[N, seq_len] rows of consecutive tokens (documents joined with EOS); the ragged tail is dropped.
    max_answer_tokens crops a document with a prompt to its prompt and that many tokens after it."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    ok: list[bool] = []
    drafted: list[bool] = []
    for path in tqdm(files, desc=desc, unit="file", leave=False):
        for doc in read_texts(path):
            toks = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
            # the prompt's tokens as the tokenizer splits the prompt alone (a chat template ends in a
            # newline, where the split of prompt + completion agrees with it)
            n_prompt = len(tokenizer(doc.prompt, add_special_tokens=False)["input_ids"]) if doc.prompt else 0
            n_prompt = min(n_prompt, len(toks))
            ended = doc.ended
            if doc.prompt and max_answer_tokens is not None and len(toks) > n_prompt + max_answer_tokens:
                toks, ended = toks[: n_prompt + max_answer_tokens], False  # cut: its EOS is no target
            ids.extend(toks)
            ok.extend([False] + [True] * (len(toks) - 1))  # a document's first token has no context
            drafted.extend([False] * n_prompt + [True] * (len(toks) - n_prompt))
            if eos is not None:
                ids.append(eos)
                ok.append(ended)
                drafted.append(ended)  # the end of an answer is drafted like its words
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{desc}: only {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return TokenRows(torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len),
                     torch.tensor(ok[: n * seq_len], dtype=torch.bool).view(n, seq_len),
                     torch.tensor(drafted[: n * seq_len], dtype=torch.bool).view(n, seq_len))


PACKING_VERSION = 3  # part of the cache key: a cache written by older packing code is never read


def load_datasets(cfg: DataConfig, tokenizer, cache_dir: Path | None = None) -> tuple[TokenRows, TokenRows]:
    """(train [N, L], heldout [N', L]) token rows, cached in cache_dir when given."""
    key = hashlib.sha256(json.dumps([repr(cfg), tokenizer.name_or_path, len(tokenizer), PACKING_VERSION]).encode())
    cache = cache_dir / f"data-{key.hexdigest()[:16]}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        d = torch.load(cache)
        return TokenRows(*d["train"]), TokenRows(*d["heldout"])
    files = corpus_files(cfg.sources)
    random.Random(cfg.shuffle_seed).shuffle(files)
    if cfg.heldout_sources:
        heldout_files = corpus_files(cfg.heldout_sources)
        both = {f.resolve() for f in files} & {f.resolve() for f in heldout_files}
        if both:
            raise ValueError(f"{sorted(map(str, both))[:3]} are both training and held-out data: "
                             "evaluation must never be on training text")
        train_files = files
    else:
        train_files = [f for f in files if not is_heldout(f, cfg.heldout_fraction)]
        heldout_files = [f for f in files if is_heldout(f, cfg.heldout_fraction)]
        if not heldout_files:  # tiny corpora: hold out the last file so evaluation is never on train text
            heldout_files, train_files = train_files[-1:], train_files[:-1]
    if not train_files:
        raise ValueError("need at least two source files: one to train on and one to hold out")
    train = pack_tokens(tokenizer, train_files, cfg.seq_len, cfg.max_train_tokens, "tokenize train",
                        cfg.max_answer_tokens)
    # held-out rows are cropped alike, so held-out agreement measures the part training aims at
    heldout = pack_tokens(tokenizer, heldout_files, cfg.seq_len, cfg.max_heldout_tokens, "tokenize held-out",
                          cfg.max_answer_tokens)
    if cache is not None:
        tmp = cache.with_suffix(".tmp")
        torch.save({"train": (train.ids, train.label_ok, train.drafted),
                    "heldout": (heldout.ids, heldout.label_ok, heldout.drafted)}, tmp)
        tmp.replace(cache)
    return train, heldout
