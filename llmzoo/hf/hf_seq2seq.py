"""Hugging Face maps for the encoder-decoder families T5 (v1.0, v1.1, Flan-T5) and BART.

T5 keeps each sub-layer under ``block.{i}.layer.{j}`` (j = 0 self-attention, 1 cross-attention in
the decoder, last the MLP) and its relative bias table in block 0 only; BART names its layers like
fairseq. Encoder and decoder stacks may differ in depth: the loader loops over each leaf's own
leading axis.

T5's ``tie_word_embeddings`` also switches the D ** -0.5 rescale of the decoder output
(transformers 5 records it as ``scale_decoder_outputs`` and always ties in memory, so a v1.1
checkpoint saved there holds ``lm_head.weight`` only when it differs from ``shared.weight``; the
map falls back to ``shared.weight`` otherwise).
"""

from __future__ import annotations

import dataclasses
import math

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
from llmzoo.models.seq2seq import Seq2SeqConfig

T5_OPTIONAL = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "lm_head.weight",
    "EncDecAttention.relative_attention_bias.weight",
)
BART_OPTIONAL = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")

# T5 ``feed_forward_proj`` <-> llmzoo MLP kind. transformers runs "gated-gelu" with gelu_new.
T5_MLP = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gated-gelu": "geglu",
    "gated-gelu_new": "geglu",
    "gated-gelu_pytorch_tanh": "geglu",
    "gated-silu": "swiglu",
}
T5_MLP_TO_HF = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_new",
    "geglu": "gated-gelu",
    "swiglu": "gated-silu",
}


def _first(ids):
    return ids[0] if isinstance(ids, list) else ids


def canonical_seq2seq(cfg: Seq2SeqConfig) -> Seq2SeqConfig:
    """Equal configs compare equal: explicit head_dim, unused position switches at defaults."""
    relative = cfg.position == "relative"
    default = Seq2SeqConfig()
    return dataclasses.replace(
        cfg,
        head_dim=cfg.dim_per_head,
        relative_buckets=cfg.relative_buckets if relative else default.relative_buckets,
        relative_max_distance=(
            cfg.relative_max_distance if relative else default.relative_max_distance
        ),
        position_offset=0 if relative else cfg.position_offset,
    )


# ---------------------------------------------------------------------------------------------
# T5


def t5_from_hf(hf: dict) -> Seq2SeqConfig:
    """The llmzoo config of a T5 ``config.json`` (v1.0, v1.1, Flan-T5)."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in T5_MLP:
        raise CheckpointError(
            f"t5 feed_forward_proj {proj!r} in config.json is not supported; llmzoo maps "
            f"{', '.join(T5_MLP)}"
        )
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    n, h = hf["num_heads"], hf["d_kv"]
    return Seq2SeqConfig(
        family="t5",
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("n_positions") or 512,
        d_model=hf["d_model"],
        n_heads=n,
        head_dim=h,
        d_ff=hf["d_ff"],
        n_encoder_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        position="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        norm_position="pre",
        final_norm=True,
        mlp=T5_MLP[proj],
        bias=False,
        tie_embeddings=bool(scale),
        decoder_output_scale=bool(scale),
        attn_scale=1.0,
        pad_id=hf.get("pad_token_id", 0),
        eos_id=_first(hf.get("eos_token_id", 1)),
        decoder_start_id=hf.get("decoder_start_token_id"),
        dropout=0.0,
    )


def t5_to_hf(cfg: Seq2SeqConfig) -> dict:
    """The ``config.json`` of a T5 llmzoo config (``tie_word_embeddings`` also sets the rescale)."""
    if cfg.mlp not in T5_MLP_TO_HF:
        raise ConfigError(
            f"model.mlp={cfg.mlp!r} has no Hugging Face t5 equivalent; use one of "
            f"{', '.join(T5_MLP_TO_HF)}"
        )
    return {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "d_model": cfg.d_model,
        "d_kv": cfg.dim_per_head,
        "d_ff": cfg.d_ff,
        "num_heads": cfg.n_heads,
        "num_layers": cfg.n_encoder_layers,
        "num_decoder_layers": cfg.n_decoder_layers,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "layer_norm_epsilon": cfg.norm_eps,
        "feed_forward_proj": T5_MLP_TO_HF[cfg.mlp],
        "tie_word_embeddings": cfg.tie_embeddings,
        "is_encoder_decoder": True,
        "dropout_rate": 0.0,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
    }


def _t5_stack(cfg: Seq2SeqConfig, stack: str, n_layers: int) -> list[Entry]:
    """One T5 stack: ``block.{i}.layer.{j}`` with j = 0 self, (1 cross), last MLP."""
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    b, leaf = f"{stack}.block.{{i}}.layer.", f"{stack}/layers/"
    subs = [("0.SelfAttention", "attn")]
    if stack == "decoder":
        subs.append(("1.EncDecAttention", "cross_attn"))
    out = []
    for j, (name, ours) in enumerate(subs):
        norm = "attn_norm" if ours == "attn" else "cross_norm"
        out += [
            linear_in(f"{b}{name}.q.weight", f"{leaf}{ours}/wq", d, (n, h)),
            linear_in(f"{b}{name}.k.weight", f"{leaf}{ours}/wk", d, (n, h)),
            linear_in(f"{b}{name}.v.weight", f"{leaf}{ours}/wv", d, (n, h)),
            linear_out(f"{b}{name}.o.weight", f"{leaf}{ours}/wo", (n, h), d),
            reshape(f"{b}{j}.layer_norm.weight", f"{leaf}{norm}/scale", (d,), (d,)),
        ]
    ff = f"{b}{len(subs)}."
    if cfg.mlp in ("geglu", "swiglu"):
        out += [
            linear_in(ff + "DenseReluDense.wi_0.weight", leaf + "mlp/w_gate", d, (f,)),
            linear_in(ff + "DenseReluDense.wi_1.weight", leaf + "mlp/w_up", d, (f,)),
        ]
    else:
        out.append(linear_in(ff + "DenseReluDense.wi.weight", leaf + "mlp/w_up", d, (f,)))
    out += [
        linear_out(ff + "DenseReluDense.wo.weight", leaf + "mlp/w_down", (f,), d),
        reshape(ff + "layer_norm.weight", leaf + "mlp_norm/scale", (d,), (d,)),
        reshape(
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            f"{stack}/relative_bias/table",
            (cfg.relative_buckets, n),
            (cfg.relative_buckets, n),
        ),
        reshape(f"{stack}.final_layer_norm.weight", f"{stack}/final_norm/scale", (d,), (d,)),
    ]
    return out


def t5_entries(cfg: Seq2SeqConfig) -> list[Entry]:
    """One entry per T5 tensor."""
    d, v = cfg.d_model, cfg.vocab_size
    out = [reshape("shared.weight", "embed/table", (v, d), (v, d))]
    out += _t5_stack(cfg, "encoder", cfg.n_encoder_layers)
    out += _t5_stack(cfg, "decoder", cfg.n_decoder_layers)
    if not cfg.tie_embeddings:
        head = linear_in("lm_head.weight", "lm_head/w", d, (v,))
        out.append(dataclasses.replace(head, fallback="shared.weight"))
    return out


# ---------------------------------------------------------------------------------------------
# BART

# config.json switches of the fairseq-style family that llmzoo's bart map does not model
# (mBART's pre-norm and final norms, ...): key -> the only supported value.
_BART_FIXED = {
    "normalize_before": False,
    "add_final_layer_norm": False,
    "normalize_embedding": True,
    "static_position_embeddings": False,
    "add_bias_logits": False,
}


def bart_from_hf(hf: dict) -> Seq2SeqConfig:
    """The llmzoo config of a BART ``config.json``; refuses the mBART-style switches."""
    for key, want in _BART_FIXED.items():
        if hf.get(key, want) != want:
            raise CheckpointError(
                f"bart config.json sets {key}={hf[key]!r}; llmzoo's bart map supports only "
                f"{key}={want!r}"
            )
    for enc, dec in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if hf[enc] != hf[dec]:
            raise CheckpointError(
                f"bart config.json has {enc}={hf[enc]} but {dec}={hf[dec]}; llmzoo's seq2seq "
                "kind uses one value for both stacks"
            )
    archs = hf.get("architectures") or ["BartForConditionalGeneration"]
    return Seq2SeqConfig(
        family="bart",
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["max_position_embeddings"],
        d_model=hf["d_model"],
        n_heads=hf["encoder_attention_heads"],
        d_ff=hf["encoder_ffn_dim"],
        n_encoder_layers=hf["encoder_layers"],
        n_decoder_layers=hf["decoder_layers"],
        position="learned",
        position_offset=2,
        norm="layernorm",
        norm_eps=1e-5,
        norm_position="post",
        embed_norm=True,
        final_norm=False,
        mlp=act_from_hf(PLAIN_ACTS, hf.get("activation_function", "gelu"), "bart"),
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        decoder_output_scale=False,
        embed_scale=bool(hf.get("scale_embedding", False)),
        # A bare BartModel checkpoint has no logits bias.
        final_logits_bias="BartModel" not in archs,
        attn_scale=None,
        pad_id=hf.get("pad_token_id", 1),
        eos_id=_first(hf.get("eos_token_id", 2)),
        decoder_start_id=hf.get("decoder_start_token_id"),
        dropout=0.0,
        init_std=float(hf.get("init_std", 0.02)),
    )


def bart_to_hf(cfg: Seq2SeqConfig) -> dict:
    """The ``config.json`` of a BART llmzoo config (``BartModel`` without a logits bias)."""
    return {
        "model_type": "bart",
        "architectures": ["BartForConditionalGeneration" if cfg.final_logits_bias else "BartModel"],
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.n_encoder_layers,
        "decoder_layers": cfg.n_decoder_layers,
        "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "activation_function": act_to_hf(PLAIN_ACTS_TO_HF, cfg.mlp, "bart"),
        "scale_embedding": cfg.embed_scale,
        "tie_word_embeddings": cfg.tie_embeddings,
        "is_encoder_decoder": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "init_std": cfg.init_std,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
        "forced_eos_token_id": None,
        **{k: v for k, v in _BART_FIXED.items() if k != "add_bias_logits"},
    }


def _bart_linear(name: str, leaf: str, d_in: int, out_shape: tuple, w: str, b: str) -> list:
    """A biased ``nn.Linear`` into heads or features: weight and bias entries."""
    return [
        linear_in(f"{name}.weight", f"{leaf}/{w}", d_in, out_shape),
        reshape(f"{name}.bias", f"{leaf}/{b}", (math.prod(out_shape),), out_shape),
    ]


def _bart_stack(cfg: Seq2SeqConfig, stack: str) -> list[Entry]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    p, leaf = f"model.{stack}.", f"{stack}/"
    rows = cfg.max_seq_len + cfg.position_offset
    out = [
        reshape(p + "embed_positions.weight", leaf + "pos_embed/table", (rows, d), (rows, d)),
        reshape(p + "layernorm_embedding.weight", leaf + "embed_norm/scale", (d,), (d,)),
        reshape(p + "layernorm_embedding.bias", leaf + "embed_norm/bias", (d,), (d,)),
    ]
    subs = [("self_attn", "attn", "attn_norm")]
    if stack == "decoder":
        subs.append(("encoder_attn", "cross_attn", "cross_norm"))
    subs.append(("", "mlp", "mlp_norm"))
    for name, ours, norm in subs:
        lp, ll = f"{p}layers.{{i}}.{name}", f"{leaf}layers/{ours}"
        hf_norm = f"{p}layers.{{i}}." + (f"{name}_layer_norm" if name else "final_layer_norm")
        if name:
            for x in "qkv":
                out += _bart_linear(f"{lp}.{x}_proj", ll, d, (n, h), f"w{x}", f"b{x}")
            out += [
                linear_out(f"{lp}.out_proj.weight", f"{ll}/wo", (n, h), d),
                reshape(f"{lp}.out_proj.bias", f"{ll}/bo", (d,), (d,)),
            ]
        else:
            out += _bart_linear(f"{lp}fc1", ll, d, (f,), "w_up", "b_up")
            out += [
                linear_out(f"{lp}fc2.weight", f"{ll}/w_down", (f,), d),
                reshape(f"{lp}fc2.bias", f"{ll}/b_down", (d,), (d,)),
            ]
        out += [
            reshape(f"{hf_norm}.weight", f"{leaf}layers/{norm}/scale", (d,), (d,)),
            reshape(f"{hf_norm}.bias", f"{leaf}layers/{norm}/bias", (d,), (d,)),
        ]
    return out


def bart_entries(cfg: Seq2SeqConfig) -> list[Entry]:
    """One entry per BART tensor."""
    d, v = cfg.d_model, cfg.vocab_size
    out = [reshape("model.shared.weight", "embed/table", (v, d), (v, d))]
    out += _bart_stack(cfg, "encoder") + _bart_stack(cfg, "decoder")
    if not cfg.tie_embeddings:
        out.append(linear_in("lm_head.weight", "lm_head/w", d, (v,)))
    if cfg.final_logits_bias:
        out.append(reshape("final_logits_bias", "final_logits_bias/bias", (1, v), (v,)))
    return out
