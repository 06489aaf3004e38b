"""Hugging Face maps for the encoder kind: BERT, RoBERTa and ALBERT (DeBERTa-v2 in hf_deberta).

The head follows ``architectures[0]`` of ``config.json`` (``BertModel`` -> ``none``,
``...ForMaskedLM`` -> ``mlm``, ``...ForPreTraining`` -> ``pretraining``,
``...ForSequenceClassification``, ``...ForTokenClassification``); base models carry a pooler.
Checkpoints saved from a bare base model omit the family's prefix (``bert.``); the loader strips it.
"""

from __future__ import annotations

import dataclasses

from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.hf_common import (
    PLAIN_ACTS,
    PLAIN_ACTS_TO_HF,
    Entry,
    act_from_hf,
    act_to_hf,
    linear_in,
    linear_out,
    reshape,
)
from llmzoo.models.encoder import EncoderConfig

ARCH_HEADS = {
    "Model": "none",
    "ForMaskedLM": "mlm",
    "ForPreTraining": "pretraining",
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
}
CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "deberta_v2": "DebertaV2"}
BASE_PREFIX = {
    "bert": "bert.",
    "roberta": "roberta.",
    "albert": "albert.",
    "deberta_v2": "deberta.",
}
WITH_PRETRAINING = ("bert", "albert")
# (transform dense, transform LayerNorm, output bias) of each family's MLM head.
_CLS = "cls.predictions."
MLM_NAMES = {
    "bert": (_CLS + "transform.dense", _CLS + "transform.LayerNorm", _CLS + "bias"),
    "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
    "albert": ("predictions.dense", "predictions.LayerNorm", "predictions.bias"),
    "deberta_v2": (_CLS + "transform.dense", _CLS + "transform.LayerNorm", _CLS + "bias"),
}
PAIR_NAMES = {"bert": "cls.seq_relationship", "albert": "sop_classifier.classifier"}
# Tensors a checkpoint may hold that the map does not read: buffers, tied decoder copies, a pooler
# or NSP head beside an MLM head, DeBERTa-v3's original lm/RTD heads.
OPTIONAL = (
    "embeddings.position_ids",
    "embeddings.token_type_ids",
    "predictions.decoder.weight",
    "predictions.decoder.bias",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
    "pooler.dense.weight",
    "pooler.dense.bias",
    "pooler.weight",
    "pooler.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
)


# ---------------------------------------------------------------------------------------------
# Config: what all encoder families share


def head_from_hf(hf: dict, family: str) -> dict:
    """``head``, ``pooler`` and ``num_labels`` from ``architectures`` (default: the base model)."""
    prefix = CLASS_PREFIX[family]
    arch = (hf.get("architectures") or [f"{prefix}Model"])[0]
    head = ARCH_HEADS.get(arch[len(prefix) :]) if arch.startswith(prefix) else None
    if head is None or (head == "pretraining" and family not in WITH_PRETRAINING):
        known = [
            prefix + s for s in ARCH_HEADS if s != "ForPreTraining" or family in WITH_PRETRAINING
        ]
        raise CheckpointError(
            f"{family} architecture {arch!r} in config.json is not supported; "
            f"llmzoo reads {', '.join(known)}"
        )
    if head == "none":
        pooler = family != "deberta_v2"  # DebertaV2Model has no pooler
    else:
        pooler = head in ("pretraining", "sequence_classification")
    num_labels = len(hf.get("id2label") or {}) or int(hf.get("num_labels", 2))
    return dict(head=head, pooler=pooler, num_labels=num_labels)


def head_to_hf(cfg: EncoderConfig) -> dict:
    """``architectures`` and labels of ``cfg.head``."""
    if cfg.head == "pretraining" and cfg.family not in WITH_PRETRAINING:
        raise ConfigError(
            f"model.head='pretraining' has no Hugging Face {cfg.family} class; "
            "use mlm (or bert/albert for a pair head)"
        )
    suffix = {head: s for s, head in ARCH_HEADS.items()}[cfg.head]
    labels = [f"LABEL_{i}" for i in range(cfg.num_labels)]
    return {
        "architectures": [CLASS_PREFIX[cfg.family] + suffix],
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def common_from_hf(hf: dict, family: str) -> dict:
    """The ``EncoderConfig`` fields every family's ``config.json`` spells the same way."""
    mlp = act_from_hf(PLAIN_ACTS, hf.get("hidden_act", "gelu"), hf["model_type"])
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError(
            f"{family} config.json sets is_decoder/add_cross_attention (a causal or "
            "cross-attending BERT); llmzoo's encoder is bidirectional: use the base encoder"
        )
    head = head_from_hf(hf, family)
    if head["head"] in ("mlm", "pretraining") and not hf.get("tie_word_embeddings", True):
        raise CheckpointError(
            f"{family} config.json sets tie_word_embeddings=false; llmzoo ties the MLM decoder "
            "to the word embeddings: re-save with tied embeddings"
        )
    return dict(
        family=family,
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        pad_id=int(hf.get("pad_token_id") or 0),
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        mlp=mlp,
        mlm_activation=mlp,
        dropout=float(hf.get("hidden_dropout_prob", 0.0)),
        init_std=float(hf.get("initializer_range", 0.02)),
        **head,
    )


def common_to_hf(cfg: EncoderConfig, model_type: str) -> dict:
    """The ``config.json`` keys every family spells the same way (inverse of the above)."""
    offset = cfg.pad_id + 1 if cfg.family == "roberta" else 0
    if cfg.position_offset != offset:
        raise ConfigError(
            f"model.position_offset={cfg.position_offset} cannot be expressed in a Hugging Face "
            f"{cfg.family} checkpoint (its positions start at {offset}); set it to {offset}"
        )
    return {
        "model_type": model_type,
        **head_to_hf(cfg),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": act_to_hf(PLAIN_ACTS_TO_HF, cfg.mlp, cfg.family),
        "max_position_embeddings": cfg.max_seq_len + cfg.position_offset,
        "type_vocab_size": cfg.type_vocab_size,
        "pad_token_id": cfg.pad_id,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": True,
    }


# ---------------------------------------------------------------------------------------------
# BERT, RoBERTa, ALBERT configs


def bert_from_hf(hf: dict) -> EncoderConfig:
    family = hf["model_type"]
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{family} position_embedding_type={hf['position_embedding_type']!r} in config.json "
            "is not supported; llmzoo reads absolute positions"
        )
    fields = common_from_hf(hf, family)
    if family == "roberta":  # positions start after the padding id; the MLM head uses gelu
        offset = fields["pad_id"] + 1
        fields |= dict(
            position_offset=offset,
            max_seq_len=fields["max_seq_len"] - offset,
            mlm_activation="gelu",
        )
    return EncoderConfig(**fields)


def bert_to_hf(cfg: EncoderConfig) -> dict:
    _require_token_types(cfg)
    return common_to_hf(cfg, cfg.family)


def albert_from_hf(hf: dict) -> EncoderConfig:
    for key in ("num_hidden_groups", "inner_group_num"):
        if hf.get(key, 1) != 1:
            raise CheckpointError(
                f"albert {key}={hf[key]} in config.json is not supported; llmzoo shares one "
                "layer across all layers (num_hidden_groups=1, inner_group_num=1)"
            )
    fields = common_from_hf(hf, "albert")
    return EncoderConfig(**fields, embed_dim=hf.get("embedding_size", 128), share_layers=True)


def albert_to_hf(cfg: EncoderConfig) -> dict:
    _require_token_types(cfg)
    out = common_to_hf(cfg, "albert")
    return out | dict(
        embedding_size=cfg.embed_width,
        num_hidden_groups=1,
        inner_group_num=1,
        classifier_dropout_prob=cfg.dropout,
    )


def _require_token_types(cfg: EncoderConfig) -> None:
    if cfg.type_vocab_size == 0:
        raise ConfigError(
            f"model.type_vocab_size=0 cannot be expressed in a Hugging Face {cfg.family} "
            "checkpoint (it always has token-type embeddings); use 1 or more"
        )


def canonical_encoder(cfg: EncoderConfig) -> EncoderConfig:
    """Resets switches that do not change what ``cfg`` computes (see ``FamilyMap.canonical``)."""
    default = EncoderConfig()
    keep = {
        ("embed_norm_after_proj", "embed_proj_bias"): cfg.embed_dim is not None,
        ("position_buckets", "max_relative_positions", "share_att_key", "rel_embed_norm"): (
            cfg.relative_attention
        ),
        ("pooler_activation",): cfg.pooler,
        ("mlm_activation",): cfg.head in ("mlm", "pretraining"),
        ("num_labels",): cfg.head in ("sequence_classification", "token_classification"),
    }
    changes = {k: getattr(default, k) for keys, kept in keep.items() if not kept for k in keys}
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.relative_attention and cfg.max_relative_positions is None:
        cfg = dataclasses.replace(cfg, max_relative_positions=cfg.max_seq_len)
    return cfg


# ---------------------------------------------------------------------------------------------
# Tensor maps


def dense(name: str, leaf: str, d_in: int, d_out: int, bias: bool = True) -> list[Entry]:
    """An ``nn.Linear`` ``name.weight [out, in]`` (+ ``.bias``) <-> ``leaf/w [in, out]``, ``b``."""
    out = [linear_in(f"{name}.weight", f"{leaf}/w", d_in, (d_out,))]
    if bias:
        out.append(reshape(f"{name}.bias", f"{leaf}/b", (d_out,), (d_out,)))
    return out


def norm(name: str, leaf: str, d: int) -> list[Entry]:
    """A ``LayerNorm`` ``name.{weight,bias}`` <-> ``leaf/{scale,bias}``."""
    return [
        reshape(f"{name}.weight", f"{leaf}/scale", (d,), (d,)),
        reshape(f"{name}.bias", f"{leaf}/bias", (d,), (d,)),
    ]


def attention_entries(cfg: EncoderConfig, q: str, k: str, v: str, o: str) -> list[Entry]:
    """q, k, v, o projections named ``q``, ``k``, ``v``, ``o`` (prefixes, without .weight)."""
    d, n, h = cfg.d_model, cfg.n_heads, cfg.dim_per_head
    out = []
    for hf, ours in ((q, "q"), (k, "k"), (v, "v")):
        out.append(linear_in(f"{hf}.weight", f"layers/attn/w{ours}", d, (n, h)))
        out.append(reshape(f"{hf}.bias", f"layers/attn/b{ours}", (n * h,), (n, h)))
    out.append(linear_out(f"{o}.weight", "layers/attn/wo", (n, h), d))
    out.append(reshape(f"{o}.bias", "layers/attn/bo", (d,), (d,)))
    return out


def bert_layer_entries(cfg: EncoderConfig, p: str, names=("query", "key", "value")) -> list[Entry]:
    """One BERT-style layer under prefix ``p`` (``bert.encoder.layer.{i}.``)."""
    d, f = cfg.d_model, cfg.d_ff
    a = p + "attention."
    return [
        *attention_entries(cfg, *(a + "self." + x for x in names), a + "output.dense"),
        *norm(a + "output.LayerNorm", "layers/attn_norm", d),
        linear_in(p + "intermediate.dense.weight", "layers/mlp/w_up", d, (f,)),
        reshape(p + "intermediate.dense.bias", "layers/mlp/b_up", (f,), (f,)),
        linear_out(p + "output.dense.weight", "layers/mlp/w_down", (f,), d),
        reshape(p + "output.dense.bias", "layers/mlp/b_down", (d,), (d,)),
        *norm(p + "output.LayerNorm", "layers/mlp_norm", d),
    ]


def albert_layer_entries(cfg: EncoderConfig, p: str) -> list[Entry]:
    """ALBERT's one shared layer (no ``{i}``: the leaves are not stacked)."""
    d, f = cfg.d_model, cfg.d_ff
    a = p + "attention."
    return [
        *attention_entries(cfg, a + "query", a + "key", a + "value", a + "dense"),
        *norm(a + "LayerNorm", "layers/attn_norm", d),
        linear_in(p + "ffn.weight", "layers/mlp/w_up", d, (f,)),
        reshape(p + "ffn.bias", "layers/mlp/b_up", (f,), (f,)),
        linear_out(p + "ffn_output.weight", "layers/mlp/w_down", (f,), d),
        reshape(p + "ffn_output.bias", "layers/mlp/b_down", (d,), (d,)),
        *norm(p + "full_layer_layer_norm", "layers/mlp_norm", d),
    ]


def embedding_entries(cfg: EncoderConfig, base: str) -> list[Entry]:
    """Word, position and token-type tables and the embedding LayerNorm under ``base``."""
    e, p = cfg.embed_width, base + "embeddings."
    out = [reshape(p + "word_embeddings.weight", "embed/table", (cfg.vocab_size, e), (-1, e))]
    if cfg.position == "learned":
        rows = cfg.max_seq_len + cfg.position_offset
        out.append(reshape(p + "position_embeddings.weight", "pos_embed/table", (rows, e), (-1, e)))
    if cfg.type_vocab_size:
        shape = (cfg.type_vocab_size, e)
        out.append(reshape(p + "token_type_embeddings.weight", "type_embed/table", shape, (-1, e)))
    width = cfg.d_model if cfg.embed_norm_after_proj else e
    return out + norm(p + "LayerNorm", "embed_norm", width)


def mlm_entries(cfg: EncoderConfig, dense_name: str, norm_name: str, bias: str) -> list[Entry]:
    """The MLM transform (dense D -> E, LayerNorm) and the output bias; the decoder is tied."""
    e, v = cfg.embed_width, cfg.vocab_size
    return [
        *dense(dense_name, "mlm", cfg.d_model, e),
        *norm(norm_name, "mlm_norm", e),
        reshape(bias, "mlm/b_out", (v,), (v,)),
    ]


def head_entries(cfg: EncoderConfig) -> list[Entry]:
    """The pooler and the tensors of ``cfg.head``."""
    d, f, base = cfg.d_model, cfg.family, BASE_PREFIX[cfg.family]
    roberta_cls = f == "roberta" and cfg.head == "sequence_classification"
    out = []
    if cfg.pooler:
        pooler = base + ("pooler" if f == "albert" else "pooler.dense")
        if roberta_cls:  # RobertaClassificationHead: dense + tanh on <s>, then out_proj
            pooler = "classifier.dense"
        elif f == "deberta_v2":  # ContextPooler sits beside the base model
            pooler = "pooler.dense"
        out += dense(pooler, "pooler", d, d)
    if cfg.head in ("mlm", "pretraining"):
        out += mlm_entries(cfg, *MLM_NAMES[f])
    if cfg.head == "pretraining":
        out += dense(PAIR_NAMES[f], "pair_head", d, 2)
    if cfg.head in ("sequence_classification", "token_classification"):
        name = "classifier.out_proj" if roberta_cls else "classifier"
        out += dense(name, "classifier", d, cfg.num_labels)
    return out


def bert_entries(cfg: EncoderConfig) -> list[Entry]:
    """BERT, RoBERTa and ALBERT tensors."""
    base = BASE_PREFIX[cfg.family]
    out = embedding_entries(cfg, base)
    if cfg.family == "albert":
        e, d = cfg.embed_width, cfg.d_model
        out += dense(base + "encoder.embedding_hidden_mapping_in", "embed_proj", e, d)
        out += albert_layer_entries(cfg, base + "encoder.albert_layer_groups.0.albert_layers.0.")
    else:
        out += bert_layer_entries(cfg, base + "encoder.layer.{i}.")
    return out + head_entries(cfg)
