"""Hugging Face maps for Longformer: RoBERTa's names under ``longformer.``, plus the global
projections ``attention.self.{query,key,value}_global`` of every layer.

Heads: ``LongformerModel`` (``none``, with a pooler), ``LongformerForMaskedLM`` (``mlm``) and
``LongformerForTokenClassification``. ``attention_window`` (one int or one per layer) maps onto
``model.attention_window``; ``max_global_tokens`` has no Hugging Face key and loads as 64.
"""

from __future__ import annotations

import dataclasses

from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.hf_common import Entry, linear_in, reshape
from llmzoo.hf.hf_encoder import (
    MLM_NAMES,
    OPTIONAL,
    bert_layer_entries,
    canonical_encoder,
    common_from_hf,
    common_to_hf,
    dense,
    embedding_entries,
    mlm_entries,
)
from llmzoo.models.encoder import EncoderConfig

LONGFORMER_PREFIX = "longformer."
LONGFORMER_OPTIONAL = OPTIONAL
# Longformer class suffix -> llmzoo head.
HEADS = {"Model": "none", "ForMaskedLM": "mlm", "ForTokenClassification": "token_classification"}


def _head(hf: dict) -> str:
    arch = (hf.get("architectures") or ["LongformerModel"])[0]
    head = HEADS.get(arch.removeprefix("Longformer")) if arch.startswith("Longformer") else None
    if head is None:
        known = ", ".join("Longformer" + s for s in HEADS)
        raise CheckpointError(
            f"longformer architecture {arch!r} in config.json is not supported; "
            f"llmzoo reads {known}"
        )
    return head


def longformer_from_hf(hf: dict) -> EncoderConfig:
    """``config.json`` -> :class:`EncoderConfig` (RoBERTa's fields plus the window)."""
    head = _head(hf)
    suffix = {v: k for k, v in HEADS.items()}[head]
    as_roberta = dict(hf, model_type="roberta", architectures=["Roberta" + suffix])
    fields = common_from_hf(as_roberta, "roberta")
    offset = fields["pad_id"] + 1
    window = hf.get("attention_window", 512)
    if isinstance(window, list | tuple):
        window = window[0] if len(set(window)) == 1 else tuple(window)
    return EncoderConfig(
        **fields
        | dict(
            family="longformer",
            position_offset=offset,
            max_seq_len=fields["max_seq_len"] - offset,
            mlm_activation="gelu",
            attention_window=window,
        )
    )


def longformer_to_hf(cfg: EncoderConfig) -> dict:
    """:class:`EncoderConfig` -> ``config.json``."""
    if cfg.attention_window is None:
        raise ConfigError(
            "model.attention_window=None cannot be expressed in a Hugging Face longformer "
            "checkpoint (it always uses windowed attention); set an even window such as 512"
        )
    if cfg.head not in HEADS.values():
        raise ConfigError(
            f"model.head={cfg.head!r} has no Hugging Face longformer class llmzoo converts; "
            f"use one of {', '.join(HEADS.values())}"
        )
    hf = common_to_hf(dataclasses.replace(cfg, family="roberta"), "longformer")
    suffix = {v: k for k, v in HEADS.items()}[cfg.head]
    window = cfg.attention_window
    return hf | dict(
        architectures=["Longformer" + suffix],
        attention_window=list(window) if isinstance(window, tuple) else window,
    )


def canonical_longformer(cfg: EncoderConfig) -> EncoderConfig:
    """Equal windows collapse to one int; ``max_global_tokens`` is not a checkpoint key."""
    cfg = canonical_encoder(cfg)
    window = cfg.attention_window
    if isinstance(window, tuple) and len(set(window)) == 1:
        window = window[0]
    return dataclasses.replace(cfg, attention_window=window, max_global_tokens=64)


def _global_entries(cfg: EncoderConfig, p: str) -> list[Entry]:
    d, n, h = cfg.d_model, cfg.n_heads, cfg.dim_per_head
    out = []
    for hf, ours in (("query", "q"), ("key", "k"), ("value", "v")):
        name = f"{p}attention.self.{hf}_global"
        out.append(linear_in(f"{name}.weight", f"layers/global_attn/w{ours}", d, (n, h)))
        out.append(reshape(f"{name}.bias", f"layers/global_attn/b{ours}", (n * h,), (n, h)))
    return out


def longformer_entries(cfg: EncoderConfig) -> list[Entry]:
    """Embeddings, layers (local and global projections) and the head's tensors."""
    layer = LONGFORMER_PREFIX + "encoder.layer.{i}."
    out = embedding_entries(cfg, LONGFORMER_PREFIX)
    out += bert_layer_entries(cfg, layer) + _global_entries(cfg, layer)
    if cfg.pooler:
        out += dense(LONGFORMER_PREFIX + "pooler.dense", "pooler", cfg.d_model, cfg.d_model)
    if cfg.head == "mlm":
        out += mlm_entries(cfg, *MLM_NAMES["roberta"])
    if cfg.head == "token_classification":
        out += dense("classifier", "classifier", cfg.d_model, cfg.num_labels)
    return out
