"""Hugging Face maps for Llama, Mistral, Qwen2 and Gemma."""

from __future__ import annotations

from llmzoo.errors import CheckpointError
from llmzoo.hf.hf_common import (
    ARCHITECTURES,
    GATED_ACTS,
    GATED_ACTS_TO_HF,
    Entry,
    act_from_hf,
    act_to_hf,
    linear_in,
    linear_out,
    reshape,
    rope_from_hf,
    rope_to_hf,
)
from llmzoo.models.decoder import DecoderConfig

# ---------------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2, Gemma: RMSNorm, RoPE, gated MLP, separate q/k/v/o projections.

LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")


def _head_dim(hf: dict, d: int, n: int) -> int | None:
    h = hf.get("head_dim")
    return None if h is None or h == d // n else int(h)


def _qwen2_window(hf: dict) -> int | None:
    """Qwen2: a window only with ``use_sliding_window``, and only on layers >= max_window_layers."""
    if not hf.get("use_sliding_window") or hf.get("sliding_window") is None:
        return None
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
        for i in range(n)
    ]
    if all(t == "full_attention" for t in types):
        return None
    if all(t == "sliding_attention" for t in types):
        return int(hf["sliding_window"])
    raise CheckpointError(
        "qwen2 config.json mixes sliding and full attention layers "
        f"(max_window_layers={hf.get('max_window_layers')}); llmzoo applies one window to every "
        "layer: set use_sliding_window=false or max_window_layers=0"
    )


def llama_like_from_hf(hf: dict) -> DecoderConfig:
    family = hf["model_type"]
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    theta, scaling, _ = rope_from_hf(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
    if family == "gemma" and act == "gelu":  # transformers maps Gemma's legacy "gelu" to tanh
        act = "gelu_pytorch_tanh"
    window = None
    if family == "mistral":
        window = hf.get("sliding_window")
    elif family == "qwen2":
        window = _qwen2_window(hf)
    return DecoderConfig(
        family=family,
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=n,
        n_kv_heads=hf.get("num_key_value_heads") or n,
        head_dim=_head_dim(hf, d, n),
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        norm_bias=False,
        norm_zero_centered=family == "gemma",
        mlp=act_from_hf(GATED_ACTS, act, family),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        out_bias=False if family == "qwen2" else attention_bias,
        sliding_window=None if window is None else int(window),
        tie_embeddings=bool(hf.get("tie_word_embeddings", family in ("gemma",))),
        embed_scale=family == "gemma",
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def llama_like_to_hf(cfg: DecoderConfig) -> dict:
    f = cfg.family
    out = {
        "model_type": f,
        "architectures": [ARCHITECTURES[f]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": act_to_hf(GATED_ACTS_TO_HF, cfg.mlp, f),
        "rope_parameters": rope_to_hf(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
    }
    if f in ("llama", "gemma"):
        out["attention_bias"] = cfg.qkv_bias
    if f == "llama":
        out["mlp_bias"] = cfg.mlp_bias
    if f == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if f == "qwen2":
        window = cfg.sliding_window
        out |= {
            "use_sliding_window": window is not None,
            "sliding_window": window,
            "max_window_layers": 0 if window is not None else cfg.n_layers,
            "layer_types": ["sliding_attention" if window is not None else "full_attention"]
            * cfg.n_layers,
        }
    return out


def llama_like_entries(cfg: DecoderConfig) -> list[Entry]:
    d, n, k, h, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff
    p = "model.layers.{i}."
    out = [
        reshape("model.embed_tokens.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        reshape(p + "input_layernorm.weight", "layers/attn_norm/scale", (d,), (d,)),
        linear_in(p + "self_attn.q_proj.weight", "layers/attn/wq", d, (n, h)),
        linear_in(p + "self_attn.k_proj.weight", "layers/attn/wk", d, (k, h)),
        linear_in(p + "self_attn.v_proj.weight", "layers/attn/wv", d, (k, h)),
        linear_out(p + "self_attn.o_proj.weight", "layers/attn/wo", (n, h), d),
        reshape(p + "post_attention_layernorm.weight", "layers/mlp_norm/scale", (d,), (d,)),
        linear_in(p + "mlp.gate_proj.weight", "layers/mlp/w_gate", d, (f,)),
        linear_in(p + "mlp.up_proj.weight", "layers/mlp/w_up", d, (f,)),
        linear_out(p + "mlp.down_proj.weight", "layers/mlp/w_down", (f,), d),
        reshape("model.norm.weight", "final_norm/scale", (d,), (d,)),
    ]
    if cfg.qkv_bias:
        out += [
            reshape(p + "self_attn.q_proj.bias", "layers/attn/bq", (n * h,), (n, h)),
            reshape(p + "self_attn.k_proj.bias", "layers/attn/bk", (k * h,), (k, h)),
            reshape(p + "self_attn.v_proj.bias", "layers/attn/bv", (k * h,), (k, h)),
        ]
    if cfg.out_bias:
        out.append(reshape(p + "self_attn.o_proj.bias", "layers/attn/bo", (d,), (d,)))
    if cfg.mlp_bias:
        out += [
            reshape(p + "mlp.gate_proj.bias", "layers/mlp/b_gate", (f,), (f,)),
            reshape(p + "mlp.up_proj.bias", "layers/mlp/b_up", (f,), (f,)),
            reshape(p + "mlp.down_proj.bias", "layers/mlp/b_down", (d,), (d,)),
        ]
    if not cfg.tie_embeddings:
        out.append(linear_in("lm_head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out
