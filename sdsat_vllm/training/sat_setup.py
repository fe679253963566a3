"""Give a model and its tokenizer the semantic adaptive tokens (SATs).

A SAT is a new special token. Its embedding row starts at the mean of the existing rows (a
neutral point inside the embedding cloud, so the first forward is not thrown off by a random
vector), and the model's config gains the `sdsat` block that names the SAT ids. A model that already
has SATs (an SDSAT model as the base of a `gated` adapter) keeps them: `reuse_sat_tokens`.
"""

from __future__ import annotations

import torch

from ..config import SDSATConfig

SAT_TOKEN_TEXT = "<|sdsat_sat|>"


def sat_token_texts(num_sat: int, distinct: bool) -> list[str]:
    if distinct:
        return [f"<|sdsat_sat_{j}|>" for j in range(num_sat)]
    return [SAT_TOKEN_TEXT] * num_sat


@torch.no_grad()
def add_sat_tokens(
    model,
    tokenizer,
    num_sat: int = 5,
    distinct: bool = False,
    train_mode: str = "lora",
    base_model: str | None = None,
    base_sha256: str | None = None,
) -> SDSATConfig:
    """Add K SATs (one id repeated K times, or K distinct ids) to `model` and `tokenizer` in place.

    Returns the SDSATConfig, which is also stored as `model.config.sdsat` so that
    `save_pretrained` writes it into config.json.
    """
    if num_sat < 1:
        raise ValueError(f"num_sat must be >= 1, got {num_sat}")
    if getattr(model.config, "sdsat", None):
        raise ValueError("this model already has SAT tokens (config.sdsat is set)")
    texts = sat_token_texts(num_sat, distinct)
    unique_texts = list(dict.fromkeys(texts))
    tokenizer.add_special_tokens({"additional_special_tokens": unique_texts}, replace_extra_special_tokens=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in texts]

    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    needed = max(ids) + 1
    if needed > old_rows:
        # Mean-initialise every new row (input and, when untied, output) ourselves, so the result
        # does not depend on which initialisation the installed transformers version picks.
        model.resize_token_embeddings(needed, mean_resizing=False)
        emb = model.get_input_embeddings()
        emb.weight[old_rows:] = emb.weight[:old_rows].float().mean(0).to(emb.weight.dtype)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
            out.weight[old_rows:] = out.weight[:old_rows].float().mean(0).to(out.weight.dtype)
    else:
        # The tokenizer already had room (padded vocab): reuse the rows but still start them at the mean.
        mean = emb.weight.float().mean(0).to(emb.weight.dtype)
        for i in set(ids):
            emb.weight[i] = mean

    cfg = SDSATConfig(
        sat_token_ids=tuple(ids),
        train_mode=train_mode,
        base_model=base_model,
        base_sha256=base_sha256,
        sat_token_texts=tuple(texts),
    )
    model.config.sdsat = cfg.to_dict()
    return cfg


def reuse_sat_tokens(
    model,
    tokenizer,
    num_sat: int,
    distinct: bool,
    train_mode: str,
    base_model: str | None = None,
    base_sha256: str | None = None,
) -> SDSATConfig:
    """The SATs a model already has (an SDSAT model as the base of a `gated` adapter: its drafter and
    served model kept, the gate's LoRA trained on top), checked against what the run asks for.

    Nothing in the model changes but its `sdsat` block, which now names this run's mode and base; the
    SAT rows stay as trained (the run starts from them). Returns that SDSATConfig.
    """
    have = SDSATConfig.from_dict(getattr(model.config, "sdsat", None) or {})
    if have.train_mode == "gated":
        raise ValueError("this model is a gated SDSAT model: its drafter is its adapter, which a new gated adapter "
                         "would drop; warm-start from that adapter (--init-adapter) on its base model instead")
    if have.num_sat != num_sat:
        raise ValueError(f"this model's SATs draft K={have.num_sat} tokens; the run asks for K={num_sat} "
                         f"(use --num-sat {have.num_sat})")
    if len(have.sat_id_set) != (num_sat if distinct else 1):
        raise ValueError(f"this model has {len(have.sat_id_set)} distinct SAT id(s); the run asks for "
                         f"{'K distinct ids' if distinct else 'one id repeated K times'} (distinct_sats {distinct})")
    rows = model.get_input_embeddings().weight.shape[0]
    if max(have.sat_token_ids) >= rows:
        raise ValueError(f"the model's vocabulary ({rows} rows) has no SAT id {max(have.sat_token_ids)}")
    for text, i in zip(have.sat_token_texts, have.sat_token_ids):
        if tokenizer.convert_tokens_to_ids(text) != i:
            raise ValueError(f"the tokenizer maps the SAT {text!r} to {tokenizer.convert_tokens_to_ids(text)}, "
                             f"the model's sdsat block says {i}")
    cfg = SDSATConfig(sat_token_ids=have.sat_token_ids, train_mode=train_mode, base_model=base_model,
                      base_sha256=base_sha256, sat_token_texts=have.sat_token_texts)
    model.config.sdsat = cfg.to_dict()
    return cfg


def sat_tokens_of(model, tokenizer, num_sat: int, distinct: bool, train_mode: str, base_model: str | None = None,
                  base_sha256: str | None = None) -> SDSATConfig:
    """add_sat_tokens for a model without SATs, reuse_sat_tokens for one that has them (gated mode only:
    any other mode would train the SDSAT model's weights, and its served model, further)."""
    if not getattr(model.config, "sdsat", None):
        return add_sat_tokens(model, tokenizer, num_sat, distinct, train_mode, base_model, base_sha256)
    if train_mode != "gated":
        raise ValueError(f"{base_model or 'this model'} already has SAT tokens (an SDSAT model): only mode gated "
                         f"trains on top of one (its served model kept); for mode {train_mode!r} start from its "
                         "base model, or continue its adapter with --init-adapter")
    return reuse_sat_tokens(model, tokenizer, num_sat, distinct, train_mode, base_model, base_sha256)
