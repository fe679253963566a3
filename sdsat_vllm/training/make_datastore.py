"""`sdsat datastore`: a datastore of the model's own text (sdsat_vllm/datastore.py) from `sdsat make-data` rows.

Each row's `completion` (what the model wrote) becomes one document, tokenized with the served
model's tokenizer; the prompts are left out (they are what users write, not what the model drafts).
The rows should be the served model's own greedy completions of prompts no benchmark uses: the
lookup drafts are accepted where they are what the model itself would write next. The file records
its sources (path, sha256, rows used) and the models that wrote the rows.

    sdsat datastore --model smollm2-135m-sdsat --sources questions.jsonl.gz code.jsonl.gz --out datastore.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["build_datastore", "read_completions"]


def read_completions(path: Path) -> tuple[list[str], set[tuple[str, str]]]:
    """(the rows' completions, the (model, model_sha256) pairs that wrote them); ValueError naming the
    line when a row is not a make-data row."""
    from .data import jsonl_rows

    texts, writers = [], set()
    for i, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("completion"), str):
            raise ValueError(f"{path}:{i}: a make-data row needs a 'completion' string field")
        texts.append(row["completion"])
        writers.add((str(row.get("model")), str(row.get("model_sha256"))))
    if not texts:
        raise ValueError(f"{path} holds no rows")
    return texts, writers


def build_datastore(model: str, sources: list[str], out: str, tokenizer=None) -> dict:
    """Tokenize the sources' completions with the model's tokenizer and write the datastore file;
    returns what was written (counts, sources)."""
    from ..datastore import save_datastore
    from ..models import resolve_model, sha256_file

    read = []  # every source is read (and refused, naming the line) before the tokenizer loads
    for src in sources:
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"source {path} does not exist")
        read.append((path, *read_completions(path)))
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(model)))
    docs, used, writers = [], [], set()
    for path, texts, who in read:
        writers |= who
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        docs.extend(ids)
        used.append({"path": str(path), "sha256": sha256_file(path), "rows": len(texts),
                     "tokens": sum(map(len, ids))})
    info = {"model": model, "vocab_size": len(tokenizer), "sources": used,
            "written_by": [{"model": m, "model_sha256": s} for m, s in sorted(writers)]}
    path = save_datastore(out, docs, info)
    return {"out": str(path), "documents": sum(u["rows"] for u in used), "tokens": sum(u["tokens"] for u in used),
            "sources": used}


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the served model (its tokenizer): a known name, an HF "
                                                       "directory or a GGUF file")
    parser.add_argument("--sources", nargs="+", required=True, help="`sdsat make-data` JSONL files (.jsonl or "
                                                                     ".jsonl.gz): the model's own completions")
    parser.add_argument("--out", required=True, help="the datastore file to write (.safetensors)")


def run(args) -> int:
    from ..models.errors import ModelFetchError

    try:
        done = build_datastore(args.model, args.sources, args.out)
    except (ValueError, FileNotFoundError, ModelFetchError) as e:
        print(f"sdsat datastore: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(done))
    return 0
