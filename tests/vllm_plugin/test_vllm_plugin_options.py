"""Fast tests: SDSAT's options (sdsat_vllm/vllm_plugin/options.py) and how they travel from the speculative
config to the proposer (patches.split_sdsat_options): defaults, refusals with the reason, no engine."""

import pytest

from sdsat_vllm.vllm_plugin.options import DEFAULT_OPTIONS, validate_options
from sdsat_vllm.vllm_plugin.patches import split_sdsat_options


def test_validate_options():
    assert validate_options(None) == {**DEFAULT_OPTIONS, "lookup": True} and DEFAULT_OPTIONS["policy"] == "adaptive"
    # lookup: on with the adaptive policy unless turned off, off with the fixed policy and in tree mode
    assert validate_options({"lookup": False})["lookup"] is False
    assert validate_options({"policy": "fixed"})["lookup"] is False
    assert validate_options({"mode": "tree"}) == {**DEFAULT_OPTIONS, "mode": "tree", "policy": "fixed", "lookup": False}
    with pytest.raises(ValueError, match="mode 'tree'.*lookup"):
        validate_options({"mode": "tree", "lookup": True})
    with pytest.raises(ValueError, match="lookup must be true or false"):
        validate_options({"lookup": "yes"})
    assert validate_options({"policy": "adaptive", "cost": 0.02})["cost"] == 0.02
    with pytest.raises(ValueError, match="unknown SDSAT option"):
        validate_options({"polcy": "adaptive"})
    with pytest.raises(ValueError, match="policy must be one of"):
        validate_options({"policy": "greedy"})
    with pytest.raises(ValueError, match="sdsat cost"):
        validate_options({"cost": "cheap"})
    with pytest.raises(ValueError, match="probe_budget"):
        validate_options({"probe_budget": 2})
    with pytest.raises(ValueError, match="lookup needs policy 'adaptive'"):
        validate_options({"policy": "fixed", "lookup": True})
    assert validate_options({"lookup": True})["policy"] == "adaptive"  # the default policy takes lookup
    assert validate_options({"policy": "adaptive", "lookup": True})["lookup"] is True


def test_validate_datastore_option(tmp_path):
    from sdsat_vllm.datastore import save_datastore

    assert DEFAULT_OPTIONS["datastore"] == "auto"
    assert validate_options({"datastore": "none"})["datastore"] == "none"
    assert validate_options({"lookup": False})["datastore"] == "auto"  # no lookup: the proposer loads none
    good = save_datastore(tmp_path / "ds.safetensors", [[1, 2, 3]], {})
    assert validate_options({"datastore": str(good)})["datastore"] == str(good)
    for bad, why in ((None, "datastore must be"), (3, "datastore must be"), ("", "datastore must be"),
                     (str(tmp_path / "missing.safetensors"), "does not exist")):
        with pytest.raises(ValueError, match=why):
            validate_options({"datastore": bad})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        validate_options({"datastore": str(tmp_path / "junk.safetensors")})
    with pytest.raises(ValueError, match="needs lookup drafts"):
        validate_options({"datastore": str(good), "lookup": False})


def test_validate_response_tokens_option():
    assert DEFAULT_OPTIONS["response_tokens"] == 0  # off unless asked for (results 25)
    assert validate_options({"response_tokens": 65536})["response_tokens"] == 65536
    for bad in (-1, 2.5, True, "64k", None):
        with pytest.raises(ValueError, match="response_tokens must be a whole number"):
            validate_options({"response_tokens": bad})
    with pytest.raises(ValueError, match="response_tokens needs lookup"):
        validate_options({"response_tokens": 100, "lookup": False})
    with pytest.raises(ValueError, match="response_tokens needs lookup"):
        validate_options({"response_tokens": 100, "policy": "fixed"})


def test_tree_mode_options():
    assert DEFAULT_OPTIONS["mode"] == "fused"
    # tree mode drafts n every step: the fixed policy is implied, the adaptive one refused
    assert validate_options({"mode": "tree"})["policy"] == "fixed"
    assert validate_options({"mode": "tree", "policy": "fixed"})["mode"] == "tree"
    with pytest.raises(ValueError, match="mode 'tree' drafts n tokens every step"):
        validate_options({"mode": "tree", "policy": "adaptive"})
    with pytest.raises(ValueError, match="mode 'tree' drafts n tokens every step"):
        validate_options({"mode": "tree", "lookup": True})
    with pytest.raises(ValueError, match="mode must be one of"):
        validate_options({"mode": "topk_tree"})


def test_speculative_config_options_move_to_additional_config():
    spec = {"model": "sdsat", "num_speculative_tokens": 4, "sdsat_policy": "adaptive", "sdsat-cost": 0.05}
    rest, extra = split_sdsat_options(spec, {"other": 1, "sdsat": {"probe_budget": 0.01, "policy": "fixed"}})
    assert rest == {"model": "sdsat", "num_speculative_tokens": 4}
    assert extra == {"other": 1, "sdsat": {"probe_budget": 0.01, "policy": "adaptive", "cost": 0.05}}
    plain = {"model": "sdsat"}
    assert split_sdsat_options(plain, {}) == (plain, {})
    assert split_sdsat_options(None, {}) == (None, {})
    with pytest.raises(ValueError, match="need model='sdsat'"):
        split_sdsat_options({"model": "ngram", "sdsat_policy": "adaptive"}, {})
    with pytest.raises(ValueError, match="unknown SDSAT option"):
        split_sdsat_options({"model": "sdsat", "sdsat_polcy": "adaptive"}, {})
