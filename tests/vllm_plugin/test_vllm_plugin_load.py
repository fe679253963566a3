"""The load test of benchmarks/load_serve.py, small: both servers (`vllm serve` plain, then with SDSAT) on
the tiny trained SDSAT model, 16 requests of the full mix (completions and chat, streaming and not,
greedy and sampled, n > 1, stop strings, logprobs, JSON schema, two requests SDSAT refuses with a 400),
8 in flight, max_tokens 1..24. No errors, every answer well formed, every greedy answer equal to the
same request sent alone to plain vLLM, RSS measured before and after, no process left behind.
The full run (200 requests, the shipped model) is `python benchmarks/load_serve.py`."""


import pytest
from vllm_plugin_helpers import VLLM_AVAILABLE, passage
from benchmark_scripts import load_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_AVAILABLE, reason="vLLM is not installed")]



def load_serve():
    return load_benchmark("load_serve")


def test_load_plain_vs_sdsat_small(sdsat_model_dir, tmp_path):
    from sdsat_vllm.config import SDSATConfig

    ls = load_serve()
    sdsat = SDSATConfig.from_pretrained(sdsat_model_dir)
    p = passage()
    prompts = [p[s:s + 80] for s in range(0, 640, 80)]  # the memorised passage: SDSAT's drafts get accepted
    reqs = ls.build_mix(16, seed=0, max_tokens_cap=24, completion_prompts=prompts, chat_prompts=prompts,
                        sat_id=sdsat.sat_token_ids[0], sampled_seeds=not ls.vllm_cpu_seed_bug())
    assert set(ls.mix_counts(reqs)) >= {"n>1", "stop-greedy", "logprobs-chat", "logprobs-completions",
                                        "json-greedy", "json-sampled", "expected-400", "completions-stream-sampled",
                                        "chat-stream-greedy"}
    cfg = dict(served_name="sdsat-tiny", max_model_len=512, dtype="float32", gpu_memory_utilization=0.3,
               enforce_eager=True, max_num_seqs=None, kv_cache_gib=1, speculative_config={"model": "sdsat"},
               extra_serve_args=[], concurrency=8, startup_timeout=400, request_timeout=120, pass_timeout=300,
               rss_growth_bound_mib=512, allowed_greedy_mismatches=0,
               sat_texts=tuple(dict.fromkeys((ls.SAT_TEXT, *sdsat.sat_token_texts))))
    report = ls.run_load(sdsat_model_dir, reqs, cfg, tmp_path)
    servers, greedy = report["servers"], report["greedy"]
    for name in ("plain", "sdsat"):
        s = servers[name]
        assert "startup_error" not in s and "error" not in s, s
        summ = s["summary"]
        assert summ["num_errors"] == 0, (name, summ["errors"], summ["error_examples"])
        assert not summ["invalid"], (name, summ["invalid"])
        assert summ["ok"] == 16 - (2 if name == "sdsat" else 0)
        assert s["rss"]["before_mib"] > 0 and s["rss"]["after_mib"] > 0 and s["rss"]["ok"], s["rss"]
        assert s["stop"]["leftover"] == [] and len(s["stop"]["seen"]) >= 2, s["stop"]  # API server + engine
        assert s["stop"]["clean"], (s["stop"], s["log"])
    assert servers["sdsat"]["summary"]["expected_errors_ok"] == 2  # the two refusals are 400s
    assert greedy["requests"] == greedy["references"] >= 6
    assert greedy["plain_concurrent_vs_alone"] == [], greedy["plain_concurrent_vs_alone"]
    assert greedy["sdsat_concurrent_vs_plain_alone"] == [], greedy["sdsat_concurrent_vs_plain_alone"]
    assert report["passed"], report["checks"]
