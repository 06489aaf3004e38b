"""Hugging Face map for DeBERTa-v2 and -v3 (``model_type`` ``deberta-v2``).

Relative attention (He et al., 2021) with log buckets, shared or separate position projections,
optional absolute positions (``position_biased_input``) and a LayerNorm on the relative table
(``norm_rel_ebd``). The MLM head is transformers' default ``legacy`` one (``cls.predictions``);
the ConvLayer of deberta-v2-xlarge/xxlarge (``conv_kernel_size``) is not supported.
transformers also zeroes the embeddings of padded positions; llmzoo does not, which changes only
the outputs at those (never attended) positions.
"""

from __future__ import annotations

from llmzoo.errors import CheckpointError
from llmzoo.hf.hf_common import (
    PLAIN_ACTS,
    PLAIN_ACTS_TO_HF,
    Entry,
    act_from_hf,
    act_to_hf,
    linear_in,
    reshape,
)
from llmzoo.hf.hf_encoder import (
    OPTIONAL,
    bert_layer_entries,
    common_from_hf,
    common_to_hf,
    dense,
    embedding_entries,
    head_entries,
    norm,
)
from llmzoo.models.encoder import EncoderConfig

# DeBERTa-v3's original heads (replaced token detection, the non-legacy MLM head), unused here.
DEBERTA_OPTIONAL = OPTIONAL + tuple(
    f"{head}.{part}"
    for head in ("lm_predictions.lm_head", "mask_predictions")
    for part in (
        "bias",
        "dense.weight",
        "dense.bias",
        "LayerNorm.weight",
        "LayerNorm.bias",
        "classifier.weight",
        "classifier.bias",
    )
)


def _refuse(hf: dict, key: str, ok: bool, fix: str) -> None:
    if not ok:
        raise CheckpointError(
            f"deberta-v2 {key}={hf.get(key)!r} in config.json is not supported; {fix}"
        )


def deberta_from_hf(hf: dict) -> EncoderConfig:
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    _refuse(hf, "conv_kernel_size", hf.get("conv_kernel_size", 0) <= 0, "llmzoo has no ConvLayer")
    mlm = "ForMaskedLM" in str(hf.get("architectures"))
    _refuse(hf, "legacy", hf.get("legacy", True) or not mlm, "llmzoo reads the legacy MLM head")
    _refuse(hf, "attention_head_size", hf.get("attention_head_size", d // n) == d // n, "use D/N")
    _refuse(hf, "pooler_hidden_size", hf.get("pooler_hidden_size", d) == d, "use hidden_size")
    pos_att_type = hf.get("pos_att_type") or ()
    if isinstance(pos_att_type, str):
        pos_att_type = [x.strip() for x in pos_att_type.lower().split("|")]
    relative = bool(hf.get("relative_attention", False))
    max_rel = int(hf.get("max_relative_positions", -1))
    e = hf.get("embedding_size", d)
    fields = common_from_hf(dict(hf, type_vocab_size=hf.get("type_vocab_size", 0)), "deberta_v2")
    return EncoderConfig(
        **fields,
        embed_dim=None if e == d else e,
        embed_norm_after_proj=True,
        embed_proj_bias=False,
        position="learned" if hf.get("position_biased_input", True) else "none",
        relative_attention=relative,
        position_buckets=max(int(hf.get("position_buckets", -1)), 0),
        max_relative_positions=max_rel if max_rel >= 1 else None,
        share_att_key=bool(hf.get("share_att_key", False)),
        pos_att_type=tuple(pos_att_type),
        rel_embed_norm="layer_norm" in str(hf.get("norm_rel_ebd", "none")).lower().split("|"),
        pooler_activation=act_from_hf(
            {"tanh": "tanh", **PLAIN_ACTS}, hf.get("pooler_hidden_act", "gelu"), "deberta-v2"
        ),
    )


def deberta_to_hf(cfg: EncoderConfig) -> dict:
    out = common_to_hf(cfg, "deberta-v2")
    pooler_act = act_to_hf({"tanh": "tanh", **PLAIN_ACTS_TO_HF}, cfg.pooler_activation, "deberta")
    return out | dict(
        embedding_size=cfg.embed_width,
        position_biased_input=cfg.position == "learned",
        relative_attention=cfg.relative_attention,
        position_buckets=cfg.position_buckets or -1,
        max_relative_positions=cfg.max_relative_positions or -1,
        share_att_key=cfg.share_att_key,
        pos_att_type=list(cfg.pos_att_type),
        norm_rel_ebd="layer_norm" if cfg.rel_embed_norm else "none",
        pooler_hidden_act=pooler_act,
        pooler_hidden_size=cfg.d_model,
        pooler_dropout=cfg.dropout,
        legacy=True,
    )


def deberta_entries(cfg: EncoderConfig) -> list[Entry]:
    """DeBERTa-v2/v3 tensors."""
    d, e = cfg.d_model, cfg.embed_width
    out = embedding_entries(cfg, "deberta.")
    if cfg.embed_dim is not None:
        out += dense("deberta.embeddings.embed_proj", "embed_proj", e, d, bias=False)
    p = "deberta.encoder."
    if cfg.relative_attention:
        rows = 2 * cfg.relative_span
        out.append(reshape(p + "rel_embeddings.weight", "rel_embed/table", (rows, d), (rows, d)))
        if cfg.rel_embed_norm:
            out += norm(p + "LayerNorm", "rel_norm", d)
    names = ("query_proj", "key_proj", "value_proj")
    out += bert_layer_entries(cfg, p + "layer.{i}.", names)
    if cfg.relative_attention and not cfg.share_att_key:  # c2p: pos_key_proj, p2c: pos_query
        a, n, h = p + "layer.{i}.attention.self.", cfg.n_heads, cfg.dim_per_head
        for term, hf, ours in (("c2p", "pos_key_proj", "k"), ("p2c", "pos_query_proj", "q")):
            if term in cfg.pos_att_type:
                out += [
                    linear_in(f"{a}{hf}.weight", f"layers/pos_proj/w{ours}", d, (n, h)),
                    reshape(f"{a}{hf}.bias", f"layers/pos_proj/b{ours}", (n * h,), (n, h)),
                ]
    return out + head_entries(cfg)
