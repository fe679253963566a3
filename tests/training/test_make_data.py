"""`sdsat make-data`: prompts cut from real code, provenance rows, resume/append, refusals."""

import copy
import json
import random
from pathlib import Path

import pytest

from sdsat_vllm.training.data import DataConfig, is_heldout, load_datasets
from sdsat_vllm.training.make_data import (MakeDataConfig, collect_prompts, make_data, make_jobs, prompts_from_jsonl,
                                           prompts_from_python)
from sdsat_vllm.training.questions import (BUILTIN_QUESTIONS, BUILTIN_QUESTIONS_2, QUESTION_SETS, QUESTION_TEMPLATES,
                                          QUESTION_TOPICS, QUESTION_TOPICS_2, builtin_questions)
from tiny_models import make_tiny_model

SOURCE = '''import os


def plain(x):
    return x


@decorator
def documented(a, b=1):
    """Add two numbers."""
    c = a + b
    d = c * 2
    e = d - 1
    return e


class Box:
    """A box."""

    def get(self, key):
        """Return the value at key."""
        return self.data[key]
'''


def test_prompts_are_natural_cut_points():
    got = list(prompts_from_python(SOURCE, "file:m.py", "m.py", random.Random(0)))
    by_kind = {}
    for p in got:
        by_kind.setdefault(p.kind, []).append(p.text)
    # functions without a docstring give no prompt; decorators come with their function
    assert '@decorator\ndef documented(a, b=1):\n    """Add two numbers."""\n' in by_kind["def_doc"]
    # a method is dedented so that it reads as a whole definition
    assert 'def get(self, key):\n    """Return the value at key."""\n' in by_kind["def_doc"]
    assert by_kind["class_doc"] == ['class Box:\n    """A box."""\n']
    (body,) = by_kind["def_body"]  # documented() has 4 body statements after its docstring
    assert body.startswith('@decorator\ndef documented') and body.endswith("\n") and "c = a + b" in body
    assert "return e" not in body  # a cut inside the function, never the whole of it
    assert not any("def plain" in t for t in sum(by_kind.values(), []))
    assert list(prompts_from_python("def broken(:\n", "x", "x", random.Random(0))) == []


def _tiny(tmp_path):
    model, tok = make_tiny_model()
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text(SOURCE)
    return model, tok, src


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _cfg(tmp_path, src, **kw) -> MakeDataConfig:
    base = dict(model="tiny", out=str(tmp_path / "out" / "sd.jsonl"), sources=(str(src),), max_tokens=6,
                chat_fraction=0.5, heldout_fraction=0.5, backend="transformers", chunk_prompts=2)
    base.update(kw)
    return MakeDataConfig(**base)


def test_rows_carry_provenance_and_resume_appends_only_what_is_missing(tmp_path):
    model, tok, src = _tiny(tmp_path)
    cfg = _cfg(tmp_path, src)
    counts = make_data(cfg, model=model, tokenizer=tok, log=lambda *_: None)
    out, held = Path(cfg.out), Path(cfg.heldout_out)
    # the split is by prompt file: m.py's rows all land on one side (is_heldout of its path)
    if is_heldout(Path("m.py"), cfg.heldout_fraction):
        out, held = held, out
    assert not held.exists()
    rows = _rows(out)
    assert counts["completions"] == len(rows) == counts["prompts"] == 4  # greedy only
    for r in rows:
        assert r["text"] == r["prompt"] + r["completion"]
        assert r["sampling"] == {"temperature": 0.0, "max_tokens": 6} and r["sample"] == 0
        assert r["prompt_source"].startswith("file:") and r["style"] in ("chat", "completion")
        assert r["generator"].startswith("transformers") and r["model"] == "tiny"
        assert 0 < r["num_completion_tokens"] <= 6 and r["finish_reason"] in ("stop", "length")
    assert {r["style"] for r in rows} == {"chat", "completion"}  # chat_fraction 0.5 of 4 prompts, seed 0
    chat = next(r for r in rows if r["style"] == "chat")
    assert chat["prompt"].startswith("<|user|>") and chat["prompt"].endswith("<|assistant|>\n")

    # the same command again: nothing to do, nothing appended
    before = out.read_bytes()
    assert make_data(cfg, model=model, tokenizer=tok, log=lambda *_: None)["skipped"] == 4
    assert out.read_bytes() == before

    # a torn last line (a crash mid-write) is cut off and that row made again
    n_before = len(_rows(out))
    out.write_bytes(before + b'{"text": "half')
    again = make_data(cfg, model=model, tokenizer=tok, log=lambda *_: None)
    assert again["written"] + again["heldout_written"] == 0 and len(_rows(out)) == n_before

    # one sampled completion per prompt more: only the new rows are generated and appended
    more = _cfg(tmp_path, src, num_samples=1, temperature=1.0)
    counts = make_data(more, model=model, tokenizer=tok, log=lambda *_: None)
    assert counts["skipped"] == 4 and counts["written"] + counts["heldout_written"] == 4
    rows = _rows(out)
    sampled = [r for r in rows if r["sample"] == 1]
    assert len(sampled) == 4 and all(r["sampling"]["temperature"] == 1.0 and "seed" in r["sampling"] for r in sampled)
    assert len({r["key"] for r in rows}) == len(rows) == 8


def test_output_trains_through_sources(tmp_path):
    model, tok, src = _tiny(tmp_path)
    cfg = _cfg(tmp_path, src, heldout_fraction=0.01, max_tokens=4)
    assert not is_heldout(Path("m.py"), 0.01)
    make_data(cfg, model=model, tokenizer=tok, log=lambda *_: None)
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"text": "def held_out():\n    return 1\n" * 20}) + "\n")
    train, heldout = load_datasets(DataConfig(sources=(cfg.out,), heldout_sources=(str(held),), seq_len=16), tok)
    assert train.shape[1] == 16 and train.shape[0] >= 1 and heldout.shape[0] >= 1


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="HumanEval"):
        MakeDataConfig(sources=("/data/HumanEval.jsonl",))
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "def f():\\n"}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: .*'prompt' string"):
        prompts_from_jsonl(bad)
    bad.write_text('{"prompt": "def f():\\n"}\nnot json\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: not valid JSON"):
        prompts_from_jsonl(bad)
    bad.write_text('{"prompt": "def f():\\n", "task_id": "HumanEval/3"}\n')
    with pytest.raises(ValueError, match="HumanEval"):
        prompts_from_jsonl(bad)

    model, tok, src = _tiny(tmp_path)
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"text": "my own data"}\n')
    with pytest.raises(ValueError, match="not a `sdsat make-data` row"):
        make_data(_cfg(tmp_path, src, out=str(foreign)), model=model, tokenizer=tok, log=lambda *_: None)
    assert foreign.read_text() == '{"text": "my own data"}\n'
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="no prompts found"):
        collect_prompts(_cfg(tmp_path, empty))
    with pytest.raises(ValueError, match="jsonl"):
        MakeDataConfig(out="data.txt")


def test_given_prompts_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "def a():\n"}) + "\n\n" + json.dumps({"prompt": "def b():\n"}) + "\n")
    got = collect_prompts(MakeDataConfig(sources=(str(f),), out=str(tmp_path / "o.jsonl")))
    assert sorted(p.text for p in got) == ["def a():\n", "def b():\n"] and {p.kind for p in got} == {"given"}


def test_builtin_questions_are_chat_turns_held_out_by_topic(tmp_path):
    model, tok, src = _tiny(tmp_path)
    cfg = _cfg(tmp_path, src, sources=(BUILTIN_QUESTIONS,), max_prompts=6, chat_fraction=0.0, heldout_fraction=0.05)
    prompts = collect_prompts(cfg)
    assert len(prompts) == 6 and {p.kind for p in prompts} == {"question"}
    assert all(p.split_key.startswith("questions/") and p.source.startswith(BUILTIN_QUESTIONS) for p in prompts)
    # every question, however chat_fraction is set: the question itself as the user's turn (no code instruction)
    jobs = make_jobs(prompts, cfg, tok)
    assert all(j.style == "chat" and j.input_text == f"<|user|>\n{j.prompt.text}\n<|assistant|>\n" for j in jobs)
    # a model without a chat template gets the Question/Answer frame instead
    no_template = copy.copy(tok)
    no_template.chat_template = None
    assert [j.input_text for j in make_jobs(prompts[:1], cfg, no_template)] == [f"Question: {prompts[0].text}\nAnswer:"]
    counts = make_data(cfg, model=model, tokenizer=tok, log=lambda *_: None)
    rows = _rows(Path(cfg.out)) + _rows(Path(cfg.heldout_out))
    assert counts["prompts"] == len(rows) == 6 and {r["prompt_kind"] for r in rows} == {"question"}
    # code sources and the questions together: both kinds, nothing from the stdlib unless asked
    both = collect_prompts(_cfg(tmp_path, src, sources=(str(src), BUILTIN_QUESTIONS), max_prompts=None))
    assert {p.kind for p in both} == {"def_doc", "def_body", "class_doc", "question"}
    assert not any(p.source.startswith("stdlib:") for p in both)


@pytest.mark.parametrize("source", sorted(QUESTION_SETS))
def test_builtin_questions_share_nothing_with_the_benchmark_questions(source):
    """The norepeat benchmark must measure questions the drafter never trained on (nor its datastore
    holds answers to)."""
    from sdsat_vllm import bench

    topics = QUESTION_SETS[source]
    assert not set(topics) & set(bench._NOREPEAT_TOPICS)
    assert not set(QUESTION_TEMPLATES) & set(bench._NOREPEAT_TEMPLATES)
    questions = [q for q, _ in builtin_questions(0, source)]
    assert len(questions) == len(set(questions)) == len(topics) * len(QUESTION_TEMPLATES)
    assert not set(questions) & set(bench.norepeat_prompts(len(bench._NOREPEAT_TOPICS) * len(bench._NOREPEAT_TEMPLATES)))
    assert not any(topic in q for q in questions for topic in bench._NOREPEAT_TOPICS)
    # held out by topic (all the questions of a few topics)
    split = {topic: is_heldout(Path(f"questions/{topic}"), 0.05) for topic in topics}
    assert 0 < sum(split.values()) < len(split) // 5


def test_builtin_question_sets_are_disjoint_and_the_first_keeps_its_order():
    """A second set adds topics; the first set's questions and order (its shipped data's) stay."""
    assert not set(QUESTION_TOPICS) & set(QUESTION_TOPICS_2)
    assert builtin_questions(0)[:2] == [("Summarize what learning a new language is in plain language.",
                                         "learning a new language"),
                                        ("How would you explain the periodic table to a friend who knows nothing "
                                         "about it?", "the periodic table")]
    with pytest.raises(ValueError, match="no built-in question set"):
        builtin_questions(0, "builtin:questions-9")
    prompts = collect_prompts(MakeDataConfig(sources=(BUILTIN_QUESTIONS, BUILTIN_QUESTIONS_2), out="unused.jsonl",
                                             max_prompts=None))
    assert len(prompts) == (len(QUESTION_TOPICS) + len(QUESTION_TOPICS_2)) * len(QUESTION_TEMPLATES)
    assert {p.source.rsplit(":", 1)[0] for p in prompts} == {BUILTIN_QUESTIONS, BUILTIN_QUESTIONS_2}
