"""Hugging Face maps for GPT-2 and GPT-NeoX, and the per-head fused q/k/v layout they share with
BLOOM (:mod:`llmzoo.hf.hf_bloom`)."""

from __future__ import annotations

import numpy as np

from llmzoo.errors import CheckpointError
from llmzoo.hf.hf_common import (
    ARCHITECTURES,
    PLAIN_ACTS,
    PLAIN_ACTS_TO_HF,
    Entry,
    act_from_hf,
    act_to_hf,
    linear_in,
    linear_out,
    reshape,
    rope_from_hf,
    rope_to_hf,
    transpose,
)
from llmzoo.models.decoder import DecoderConfig

# ---------------------------------------------------------------------------------------------
# GPT-2: learned positions, LayerNorm, Conv1D ([in, out]) weights with q, k, v fused side by side.


def gpt2_from_hf(hf: dict) -> DecoderConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("add_cross_attention"):
        raise CheckpointError(
            "gpt2 config.json sets scale_attn_by_inverse_layer_idx or add_cross_attention, which "
            "llmzoo does not implement; use a plain GPT-2 checkpoint"
        )
    d = hf["n_embd"]
    return DecoderConfig(
        family="gpt2",
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_seq_len=hf.get("n_positions", 1024),
        position="learned",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp=act_from_hf(PLAIN_ACTS, hf.get("activation_function", "gelu_new"), "gpt2"),
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def gpt2_to_hf(cfg: DecoderConfig) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": [ARCHITECTURES["gpt2"]],
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "n_positions": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": act_to_hf(PLAIN_ACTS_TO_HF, cfg.mlp, "gpt2"),
        "scale_attn_weights": cfg.attn_scale is None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,
    }


def gpt2_entries(cfg: DecoderConfig) -> list[Entry]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    p = "transformer.h.{i}."

    def split_w(w):  # [D, 3 N H] -> 3 x [D, N, H]
        return tuple(x.reshape(d, n, h) for x in np.split(w, 3, axis=1))

    def split_b(b):  # [3 N H] -> 3 x [N, H]
        return tuple(x.reshape(n, h) for x in np.split(b, 3))

    out = [
        reshape("transformer.wte.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        reshape("transformer.wpe.weight", "pos_embed/table", (cfg.max_seq_len, d), (-1, d)),
        reshape(p + "ln_1.weight", "layers/attn_norm/scale", (d,), (d,)),
        reshape(p + "ln_1.bias", "layers/attn_norm/bias", (d,), (d,)),
        Entry(
            p + "attn.c_attn.weight",
            ("layers/attn/wq", "layers/attn/wk", "layers/attn/wv"),
            (d, 3 * n * h),
            split_w,
            lambda q, k, v: np.concatenate([x.reshape(d, n * h) for x in (q, k, v)], axis=1),
        ),
        Entry(
            p + "attn.c_attn.bias",
            ("layers/attn/bq", "layers/attn/bk", "layers/attn/bv"),
            (3 * n * h,),
            split_b,
            lambda q, k, v: np.concatenate([x.reshape(-1) for x in (q, k, v)]),
        ),
        reshape(p + "attn.c_proj.weight", "layers/attn/wo", (n * h, d), (n, h, d)),
        reshape(p + "attn.c_proj.bias", "layers/attn/bo", (d,), (d,)),
        reshape(p + "ln_2.weight", "layers/mlp_norm/scale", (d,), (d,)),
        reshape(p + "ln_2.bias", "layers/mlp_norm/bias", (d,), (d,)),
        reshape(p + "mlp.c_fc.weight", "layers/mlp/w_up", (d, f), (d, f)),
        reshape(p + "mlp.c_fc.bias", "layers/mlp/b_up", (f,), (f,)),
        reshape(p + "mlp.c_proj.weight", "layers/mlp/w_down", (f, d), (f, d)),
        reshape(p + "mlp.c_proj.bias", "layers/mlp/b_down", (d,), (d,)),
        reshape("transformer.ln_f.weight", "final_norm/scale", (d,), (d,)),
        reshape("transformer.ln_f.bias", "final_norm/bias", (d,), (d,)),
    ]
    if not cfg.tie_embeddings:
        out.append(linear_in("lm_head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out


# ---------------------------------------------------------------------------------------------
# GPT-NeoX (Pythia): LayerNorm, partial rotary, parallel residual, q/k/v fused per head.


def gpt_neox_from_hf(hf: dict) -> DecoderConfig:
    theta, scaling, params = rope_from_hf(hf)
    if "rotary_emb_base" in hf and "rope_theta" not in params:
        theta = float(hf["rotary_emb_base"])
    fraction = params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    bias = bool(hf.get("attention_bias", True))
    return DecoderConfig(
        family="gpt_neox",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        position="rope",
        rope_theta=theta,
        rope_fraction=float(fraction),
        rope_scaling=scaling,
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        mlp=act_from_hf(PLAIN_ACTS, hf.get("hidden_act", "gelu"), "gpt_neox"),
        mlp_bias=True,
        qkv_bias=bias,
        out_bias=bias,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def gpt_neox_to_hf(cfg: DecoderConfig) -> dict:
    return {
        "model_type": "gpt_neox",
        "architectures": [ARCHITECTURES["gpt_neox"]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_parameters": {**rope_to_hf(cfg), "partial_rotary_factor": cfg.rope_fraction},
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": act_to_hf(PLAIN_ACTS_TO_HF, cfg.mlp, "gpt_neox"),
        "attention_bias": cfg.qkv_bias,
        "use_parallel_residual": cfg.parallel_residual,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": 0.0,
    }


def per_head_qkv(name: str, d: int, n: int, h: int, *, bias: bool) -> list[Entry]:
    """The ``nn.Linear`` of q, k, v fused per head (GPT-NeoX, BLOOM): weight rows ``[N, 3, H]``
    (``[3 N H, D]``) <-> ``wq, wk, wv [D, N, H]``; with ``bias``, ``[N, 3, H]`` <-> ``bq, bk, bv``.
    ``name`` is the module's name, without ``.weight``."""

    def split_w(w):  # [N 3 H, D] rows grouped per head -> 3 x [D, N, H]
        w = w.reshape(n, 3, h, d)
        return tuple(transpose(w[:, j].reshape(n * h, d)).reshape(d, n, h) for j in range(3))

    def split_b(b):  # [N 3 H] -> 3 x [N, H]
        b = b.reshape(n, 3, h)
        return tuple(b[:, j] for j in range(3))

    out = [
        Entry(
            name + ".weight",
            ("layers/attn/wq", "layers/attn/wk", "layers/attn/wv"),
            (3 * n * h, d),
            split_w,
            lambda q, k, v: np.stack(
                [transpose(x.reshape(d, n * h)).reshape(n, h, d) for x in (q, k, v)], 1
            ).reshape(-1, d),
        )
    ]
    if bias:
        out.append(
            Entry(
                name + ".bias",
                ("layers/attn/bq", "layers/attn/bk", "layers/attn/bv"),
                (3 * n * h,),
                split_b,
                lambda q, k, v: np.stack([q, k, v], 1).reshape(-1),
            )
        )
    return out


def gpt_neox_entries(cfg: DecoderConfig) -> list[Entry]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    p = "gpt_neox.layers.{i}."
    out = [
        reshape("gpt_neox.embed_in.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        reshape(p + "input_layernorm.weight", "layers/attn_norm/scale", (d,), (d,)),
        reshape(p + "input_layernorm.bias", "layers/attn_norm/bias", (d,), (d,)),
        *per_head_qkv(p + "attention.query_key_value", d, n, h, bias=cfg.qkv_bias),
        linear_out(p + "attention.dense.weight", "layers/attn/wo", (n, h), d),
        reshape(p + "post_attention_layernorm.weight", "layers/mlp_norm/scale", (d,), (d,)),
        reshape(p + "post_attention_layernorm.bias", "layers/mlp_norm/bias", (d,), (d,)),
        linear_in(p + "mlp.dense_h_to_4h.weight", "layers/mlp/w_up", d, (f,)),
        reshape(p + "mlp.dense_h_to_4h.bias", "layers/mlp/b_up", (f,), (f,)),
        linear_out(p + "mlp.dense_4h_to_h.weight", "layers/mlp/w_down", (f,), d),
        reshape(p + "mlp.dense_4h_to_h.bias", "layers/mlp/b_down", (d,), (d,)),
        reshape("gpt_neox.final_layer_norm.weight", "final_norm/scale", (d,), (d,)),
        reshape("gpt_neox.final_layer_norm.bias", "final_norm/bias", (d,), (d,)),
    ]
    if cfg.out_bias:
        out.append(reshape(p + "attention.dense.bias", "layers/attn/bo", (d,), (d,)))
    if not cfg.tie_embeddings:
        out.append(linear_in("embed_out.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out
