"""Training data: which files are trained on and which are held out, and the packed rows."""

from pathlib import Path

import pytest
import torch

from sdsat_vllm.training.data import DataConfig, is_heldout, load_datasets
from tiny_models import make_tiny_tokenizer


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _rows_contain(rows, ids: list[int]) -> bool:
    flat = rows.ids.flatten().tolist()
    return any(flat[i : i + len(ids)] == ids for i in range(len(flat) - len(ids) + 1))


def test_explicit_heldout_sources_are_never_trained_on(tmp_path):
    tok = make_tiny_tokenizer()
    train_text, eval_text = "def train_me(x):\n    return x + 1\n" * 30, "class HeldOut:\n    pass\n" * 30
    cfg = DataConfig(sources=[_write(tmp_path / "a.txt", train_text)],  # lists, as JSON and argparse give them
                     heldout_sources=[_write(tmp_path / "b.txt", eval_text)], seq_len=16)
    assert isinstance(cfg.sources, tuple) and isinstance(cfg.heldout_sources, tuple)
    train, heldout = load_datasets(cfg, tok)
    train_ids = tok("def train_me", add_special_tokens=False).input_ids
    eval_ids = tok("class HeldOut", add_special_tokens=False).input_ids
    assert _rows_contain(train, train_ids) and not _rows_contain(train, eval_ids)
    assert _rows_contain(heldout, eval_ids) and not _rows_contain(heldout, train_ids)


def test_a_file_both_trained_on_and_held_out_is_refused(tmp_path):
    tok = make_tiny_tokenizer()
    a = _write(tmp_path / "a.txt", "x = 1\n" * 50)
    with pytest.raises(ValueError, match="both training and held-out data"):
        load_datasets(DataConfig(sources=(str(tmp_path),), heldout_sources=(a,), seq_len=8), tok)


def test_hash_split_ignores_where_the_tree_lives():
    """The same stdlib files are held out on every machine, whatever the interpreter's prefix."""
    names = [f"python3.11/{m}.py" for m in ("textwrap", "json/decoder", "asyncio/tasks", "os", "re/_parser")] * 40
    names = [n.replace(".py", f"_{i}.py") for i, n in enumerate(names)]
    here = [is_heldout(Path("/usr/lib") / n, 0.05) for n in names]
    there = [is_heldout(Path("/opt/conda/lib") / n, 0.05) for n in names]
    assert here == there and 0 < sum(here) < len(here)


def test_without_heldout_files_one_file_is_held_out(tmp_path):
    tok = make_tiny_tokenizer()
    for name in ("a", "b", "c"):
        _write(tmp_path / f"{name}.txt", f"{name} = {name!r}\n" * 40)
    # a fraction so small that no path hashes into it: the tiny-corpus fallback holds out one file
    train, heldout = load_datasets(DataConfig(sources=(str(tmp_path),), heldout_fraction=1e-12, seq_len=8), tok)
    assert train.shape[0] > heldout.shape[0] > 0
    assert train.shape[1] == heldout.shape[1] == 8


def test_gzipped_jsonl_reads_like_plain(tmp_path):
    import gzip
    import json

    tok = make_tiny_tokenizer()
    rows = "".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) + "\n" for i in range(40))
    (tmp_path / "a.jsonl").write_text(rows)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(rows)
    held = _write(tmp_path / "held.txt", "class HeldOut:\n    pass\n" * 30)
    plain, _ = load_datasets(DataConfig(sources=[str(tmp_path / "a.jsonl")], heldout_sources=[held], seq_len=16), tok)
    gz, _ = load_datasets(DataConfig(sources=[str(tmp_path / "b.jsonl.gz")], heldout_sources=[held], seq_len=16), tok)
    assert torch.equal(plain.ids, gz.ids) and torch.equal(plain.label_ok, gz.label_ok)


def test_a_row_cut_by_its_token_budget_teaches_no_end_of_answer(tmp_path):
    """EOS after a completion that stopped is a target; after one cut by max_tokens it is not (else the
    trained model learns to end answers early), and no document's first token is predicted from the last."""
    import json

    tok = make_tiny_tokenizer()
    eos = tok.eos_token_id
    rows = [{"text": "def a(x):\n    return x\n", "finish_reason": "stop"},
            {"text": "def b(y):\n    y = y + 1\n", "finish_reason": "length"},
            {"text": "class C:\n    pass\n"}]  # no finish_reason: a document that ended
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = _write(tmp_path / "held.txt", "class HeldOut:\n    pass\n" * 30)
    lengths = [len(tok(r["text"], add_special_tokens=False).input_ids) + 1 for r in rows]  # + EOS each
    train, _ = load_datasets(DataConfig(sources=[str(tmp_path / "a.jsonl")], heldout_sources=[held],
                                        seq_len=sum(lengths)), tok)
    ids, ok = train.ids[0].tolist(), train.label_ok[0].tolist()
    ends = [sum(lengths[: i + 1]) - 1 for i in range(3)]
    assert [ids[e] for e in ends] == [eos] * 3
    assert [ok[e] for e in ends] == [True, False, True]
    starts = [0, ends[0] + 1, ends[1] + 1]
    assert [ok[s] for s in starts] == [False] * 3
    assert sum(ok) == len(ok) - 4


def test_a_rows_prompt_is_marked_as_never_drafted(tmp_path):
    """A make-data row's prompt is prefilled in serving, never drafted: its tokens are marked so that
    `sat_blocks drafted` puts no SAT block there; its completion and the EOS after it are drafted; a row
    whose text does not start with its prompt, and a plain file, are drafted throughout."""
    import json

    tok = make_tiny_tokenizer()
    prompt = "Question: what is x?\nAnswer:\n"
    rows = [{"text": prompt + "x is a name.", "prompt": prompt, "completion": "x is a name."},
            {"text": "y = 1\n", "prompt": "something else"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = _write(tmp_path / "held.txt", "class HeldOut:\n    pass\n" * 30)
    n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
    lengths = [len(tok(r["text"], add_special_tokens=False).input_ids) + 1 for r in rows]  # + EOS each
    train, held_rows = load_datasets(DataConfig(sources=[str(tmp_path / "a.jsonl")], heldout_sources=[held],
                                                seq_len=sum(lengths)), tok)
    drafted = train.drafted[0].tolist()
    assert drafted[:n_prompt] == [False] * n_prompt
    assert drafted[n_prompt:] == [True] * (sum(lengths) - n_prompt)
    assert held_rows.drafted.all()
    assert train[[0]].drafted.shape == (1, sum(lengths))


def test_max_answer_tokens_keeps_the_prompt_and_the_answers_opening(tmp_path):
    """max_answer_tokens N: a make-data row becomes its prompt + the first N tokens of its answer, and its
    EOS is then no target (the answer did not end there); a row whose answer is no longer than N and a
    document without a prompt are kept whole; None keeps everything."""
    import json

    tok = make_tiny_tokenizer()
    eos = tok.eos_token_id
    prompt = "Question: what is x?\nAnswer:\n"
    answer = "x is a name that stands for a value in the program."
    rows = [{"text": prompt + answer, "prompt": prompt},
            {"text": prompt + "x.", "prompt": prompt},
            {"text": "def f(a):\n    return a\n"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = _write(tmp_path / "held.txt", "class HeldOut:\n    pass\n" * 30)
    toks = [tok(r["text"], add_special_tokens=False).input_ids for r in rows]
    n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
    n = 3
    assert len(toks[0]) > n_prompt + n and len(toks[1]) <= n_prompt + n  # the rows test what they claim
    want = toks[0][: n_prompt + n] + [eos] + toks[1] + [eos] + toks[2] + [eos]
    cfg = dict(sources=[str(tmp_path / "a.jsonl")], heldout_sources=[held], seq_len=len(want))
    train, _ = load_datasets(DataConfig(**cfg, max_answer_tokens=n), tok)
    assert train.ids[0].tolist() == want
    cut_eos = n_prompt + n
    assert not train.label_ok[0, cut_eos] and not train.drafted[0, cut_eos]
    assert train.label_ok[0, len(want) - 1] and train.drafted[0, len(toks[0][: n_prompt + n]) + len(toks[1])]
    whole, _ = load_datasets(DataConfig(**cfg), tok)  # None: the first row is kept whole
    assert whole.ids[0, : len(toks[0])].tolist() == toks[0]
    with pytest.raises(ValueError, match="max_answer_tokens"):
        DataConfig(max_answer_tokens=0)
