"""Per-family maps between Hugging Face checkpoints and llmzoo: config keys and tensor names.

Hugging Face names live here and nowhere else in llmzoo. Each family gives

* ``config_from_hf(hf: dict) -> ModelConfig`` and ``config_to_hf(cfg) -> dict`` (``config.json``);
* ``entries(cfg) -> list[Entry]``: one :class:`Entry` per Hugging Face tensor, naming the llmzoo
  leaves it holds, its shape, and the two layout transforms.

Layouts: a ``torch.nn.Linear`` weight is ``[out, in]``; llmzoo keeps ``[in, out]`` with heads split
out (``wq [D, N, H]``, ``wo [N, H, D]``). GPT-2's ``Conv1D`` is already ``[in, out]`` and fuses
q, k, v side by side; GPT-NeoX fuses them per head (``[N, 3, H]`` rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from llmzoo.config import ModelConfig
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.layers.positional import RopeScaling


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Hugging Face tensor and the llmzoo leaves it maps to.

    Attributes:
        name: the Hugging Face name; ``{i}`` marks a per-layer tensor (llmzoo leaves are then
            stacked on a leading L axis and each layer maps to one slice).
        leaves: llmzoo leaf paths (``'layers/attn/wq'``) held by this tensor.
        shape: the Hugging Face shape (of one layer).
        load: ``hf_array -> tuple of llmzoo arrays`` (one per leaf, one layer's slice).
        save: ``*llmzoo_arrays -> hf_array``.
    """

    name: str
    leaves: tuple[str, ...]
    shape: tuple[int, ...]
    load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    save: Callable[..., np.ndarray]


def transpose(w: np.ndarray, rows: int = 32) -> np.ndarray:
    """A C-contiguous ``w.T`` of a 2-D array, copied in blocks of rows (a single strided copy of
    a large matrix misses the cache on every element and is about 4x slower)."""
    out = np.empty(w.shape[::-1], w.dtype)
    for start in range(0, w.shape[0], rows):
        out[:, start : start + rows] = w[start : start + rows].T
    return out


def _reshape(name, leaf, hf_shape, shape) -> Entry:
    """Same data, different shape (norms, biases, embeddings)."""
    return Entry(
        name, (leaf,), tuple(hf_shape), lambda w: (w.reshape(shape),), lambda x: x.reshape(hf_shape)
    )


def _linear_in(name, leaf, d_in, out_shape) -> Entry:
    """``nn.Linear`` weight ``[prod(out), in]`` <-> llmzoo ``[in, *out]``."""
    n_out = int(np.prod(out_shape))
    return Entry(
        name,
        (leaf,),
        (n_out, d_in),
        lambda w: (transpose(w).reshape(d_in, *out_shape),),
        lambda x: transpose(x.reshape(d_in, n_out)),
    )


def _linear_out(name, leaf, in_shape, d_out) -> Entry:
    """``nn.Linear`` weight ``[out, prod(in)]`` <-> llmzoo ``[*in, out]``."""
    n_in = int(np.prod(in_shape))
    return Entry(
        name,
        (leaf,),
        (d_out, n_in),
        lambda w: (transpose(w).reshape(*in_shape, d_out),),
        lambda x: transpose(x.reshape(n_in, d_out)),
    )


# ---------------------------------------------------------------------------------------------
# RoPE and activations


def _rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None, dict]:
    """Reads ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4.x).

    Returns ``(theta, scaling, parameters)``.
    """
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None, params
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(params["factor"])), params
    orig = params.get("original_max_position_embeddings") or hf.get(
        "original_max_position_embeddings", hf.get("max_position_embeddings")
    )
    if kind == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(orig),
        )
        return theta, scaling, params
    if kind == "yarn":
        factor = params.get("factor") or hf["max_position_embeddings"] / orig

        def opt(key):
            return None if params.get(key) is None else float(params[key])

        scaling = RopeScaling(
            kind="yarn",
            factor=float(factor),
            original_max_position_embeddings=int(orig),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=opt("attention_factor"),
            mscale=opt("mscale"),
            mscale_all_dim=opt("mscale_all_dim"),
            truncate=bool(params.get("truncate", True)),
        )
        return theta, scaling, params
    raise CheckpointError(
        f"rope_type {kind!r} in config.json is not supported (dynamic and longrope depend on the "
        "sequence length); llmzoo supports default, linear, yarn and llama3"
    )


def _rope_to_hf(cfg: ModelConfig) -> dict:
    out = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    s = cfg.rope_scaling
    if s is None:
        return out
    if s.kind == "linear":
        return {**out, "rope_type": "linear", "factor": s.factor}
    if s.kind == "llama3":
        return {
            **out,
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    if s.kind == "yarn":
        out = {
            **out,
            "rope_type": "yarn",
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
            "beta_fast": s.beta_fast,
            "beta_slow": s.beta_slow,
            "truncate": s.truncate,
        }
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(s, key) is not None:
                out[key] = getattr(s, key)
        return out
    raise ConfigError(
        f"model.rope_scaling.kind={s.kind!r} has no Hugging Face equivalent; "
        "use linear, yarn or llama3 to export"
    )


# Hugging Face activation name -> llmzoo MLP kind, for plain and gated MLPs.
_PLAIN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GATED = {
    "silu": "swiglu",
    "gelu_pytorch_tanh": "geglu",
    "gelu_new": "geglu",
    "gelu": "geglu_exact",
}
_PLAIN_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_GATED_TO_HF = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "geglu_exact": "gelu"}


def _act(table: dict, name: str, model_type: str) -> str:
    if name not in table:
        raise CheckpointError(
            f"{model_type} activation {name!r} in config.json is not supported; "
            f"llmzoo maps {', '.join(table)}"
        )
    return table[name]


def _act_to_hf(table: dict, kind: str, family: str) -> str:
    if kind not in table:
        raise ConfigError(
            f"model.mlp={kind!r} has no Hugging Face {family} equivalent; use one of "
            f"{', '.join(table)}"
        )
    return table[kind]


# ---------------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2, Gemma: RMSNorm, RoPE, gated MLP, separate q/k/v/o projections.

LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")
_ARCH = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
}


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


def _llama_like_from_hf(hf: dict) -> ModelConfig:
    family = hf["model_type"]
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    theta, scaling, _ = _rope_from_hf(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
    if family == "gemma" and act == "gelu":  # transformers maps Gemma's legacy "gelu" to tanh
        act = "gelu_pytorch_tanh"
    window = None
    if family == "mistral":
        window = hf.get("sliding_window")
    elif family == "qwen2":
        window = _qwen2_window(hf)
    return ModelConfig(
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
        mlp=_act(_GATED, act, family),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        out_bias=False if family == "qwen2" else attention_bias,
        sliding_window=None if window is None else int(window),
        tie_embeddings=bool(hf.get("tie_word_embeddings", family in ("gemma",))),
        embed_scale=family == "gemma",
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _llama_like_to_hf(cfg: ModelConfig) -> dict:
    f = cfg.family
    out = {
        "model_type": f,
        "architectures": [_ARCH[f]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": _act_to_hf(_GATED_TO_HF, cfg.mlp, f),
        "rope_parameters": _rope_to_hf(cfg),
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


def _llama_like_entries(cfg: ModelConfig) -> list[Entry]:
    d, n, k, h, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff
    p = "model.layers.{i}."
    out = [
        _reshape("model.embed_tokens.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        _reshape(p + "input_layernorm.weight", "layers/attn_norm/scale", (d,), (d,)),
        _linear_in(p + "self_attn.q_proj.weight", "layers/attn/wq", d, (n, h)),
        _linear_in(p + "self_attn.k_proj.weight", "layers/attn/wk", d, (k, h)),
        _linear_in(p + "self_attn.v_proj.weight", "layers/attn/wv", d, (k, h)),
        _linear_out(p + "self_attn.o_proj.weight", "layers/attn/wo", (n, h), d),
        _reshape(p + "post_attention_layernorm.weight", "layers/mlp_norm/scale", (d,), (d,)),
        _linear_in(p + "mlp.gate_proj.weight", "layers/mlp/w_gate", d, (f,)),
        _linear_in(p + "mlp.up_proj.weight", "layers/mlp/w_up", d, (f,)),
        _linear_out(p + "mlp.down_proj.weight", "layers/mlp/w_down", (f,), d),
        _reshape("model.norm.weight", "final_norm/scale", (d,), (d,)),
    ]
    if cfg.qkv_bias:
        out += [
            _reshape(p + "self_attn.q_proj.bias", "layers/attn/bq", (n * h,), (n, h)),
            _reshape(p + "self_attn.k_proj.bias", "layers/attn/bk", (k * h,), (k, h)),
            _reshape(p + "self_attn.v_proj.bias", "layers/attn/bv", (k * h,), (k, h)),
        ]
    if cfg.out_bias:
        out.append(_reshape(p + "self_attn.o_proj.bias", "layers/attn/bo", (d,), (d,)))
    if cfg.mlp_bias:
        out += [
            _reshape(p + "mlp.gate_proj.bias", "layers/mlp/b_gate", (f,), (f,)),
            _reshape(p + "mlp.up_proj.bias", "layers/mlp/b_up", (f,), (f,)),
            _reshape(p + "mlp.down_proj.bias", "layers/mlp/b_down", (d,), (d,)),
        ]
    if not cfg.tie_embeddings:
        out.append(_linear_in("lm_head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out


# ---------------------------------------------------------------------------------------------
# GPT-2: learned positions, LayerNorm, Conv1D ([in, out]) weights with q, k, v fused side by side.


def _gpt2_from_hf(hf: dict) -> ModelConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("add_cross_attention"):
        raise CheckpointError(
            "gpt2 config.json sets scale_attn_by_inverse_layer_idx or add_cross_attention, which "
            "llmzoo does not implement; use a plain GPT-2 checkpoint"
        )
    d = hf["n_embd"]
    return ModelConfig(
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
        mlp=_act(_PLAIN, hf.get("activation_function", "gelu_new"), "gpt2"),
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _gpt2_to_hf(cfg: ModelConfig) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": [_ARCH["gpt2"]],
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "n_positions": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": _act_to_hf(_PLAIN_TO_HF, cfg.mlp, "gpt2"),
        "scale_attn_weights": cfg.attn_scale is None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,
    }


def _gpt2_entries(cfg: ModelConfig) -> list[Entry]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    p = "transformer.h.{i}."

    def split_w(w):  # [D, 3 N H] -> 3 x [D, N, H]
        return tuple(x.reshape(d, n, h) for x in np.split(w, 3, axis=1))

    def split_b(b):  # [3 N H] -> 3 x [N, H]
        return tuple(x.reshape(n, h) for x in np.split(b, 3))

    out = [
        _reshape("transformer.wte.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        _reshape("transformer.wpe.weight", "pos_embed/table", (cfg.max_seq_len, d), (-1, d)),
        _reshape(p + "ln_1.weight", "layers/attn_norm/scale", (d,), (d,)),
        _reshape(p + "ln_1.bias", "layers/attn_norm/bias", (d,), (d,)),
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
        _reshape(p + "attn.c_proj.weight", "layers/attn/wo", (n * h, d), (n, h, d)),
        _reshape(p + "attn.c_proj.bias", "layers/attn/bo", (d,), (d,)),
        _reshape(p + "ln_2.weight", "layers/mlp_norm/scale", (d,), (d,)),
        _reshape(p + "ln_2.bias", "layers/mlp_norm/bias", (d,), (d,)),
        _reshape(p + "mlp.c_fc.weight", "layers/mlp/w_up", (d, f), (d, f)),
        _reshape(p + "mlp.c_fc.bias", "layers/mlp/b_up", (f,), (f,)),
        _reshape(p + "mlp.c_proj.weight", "layers/mlp/w_down", (f, d), (f, d)),
        _reshape(p + "mlp.c_proj.bias", "layers/mlp/b_down", (d,), (d,)),
        _reshape("transformer.ln_f.weight", "final_norm/scale", (d,), (d,)),
        _reshape("transformer.ln_f.bias", "final_norm/bias", (d,), (d,)),
    ]
    if not cfg.tie_embeddings:
        out.append(_linear_in("lm_head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out


# ---------------------------------------------------------------------------------------------
# GPT-NeoX (Pythia): LayerNorm, partial rotary, parallel residual, q/k/v fused per head.


def _gpt_neox_from_hf(hf: dict) -> ModelConfig:
    theta, scaling, params = _rope_from_hf(hf)
    if "rotary_emb_base" in hf and "rope_theta" not in params:
        theta = float(hf["rotary_emb_base"])
    fraction = params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    bias = bool(hf.get("attention_bias", True))
    return ModelConfig(
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
        mlp=_act(_PLAIN, hf.get("hidden_act", "gelu"), "gpt_neox"),
        mlp_bias=True,
        qkv_bias=bias,
        out_bias=bias,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _gpt_neox_to_hf(cfg: ModelConfig) -> dict:
    return {
        "model_type": "gpt_neox",
        "architectures": [_ARCH["gpt_neox"]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_parameters": {**_rope_to_hf(cfg), "partial_rotary_factor": cfg.rope_fraction},
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": _act_to_hf(_PLAIN_TO_HF, cfg.mlp, "gpt_neox"),
        "attention_bias": cfg.qkv_bias,
        "use_parallel_residual": cfg.parallel_residual,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": 0.0,
    }


def _gpt_neox_entries(cfg: ModelConfig) -> list[Entry]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    p = "gpt_neox.layers.{i}."

    def split_w(w):  # [N 3 H, D] rows grouped per head -> 3 x [D, N, H]
        w = w.reshape(n, 3, h, d)
        return tuple(transpose(w[:, j].reshape(n * h, d)).reshape(d, n, h) for j in range(3))

    def split_b(b):  # [N 3 H] -> 3 x [N, H]
        b = b.reshape(n, 3, h)
        return tuple(b[:, j] for j in range(3))

    out = [
        _reshape("gpt_neox.embed_in.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        _reshape(p + "input_layernorm.weight", "layers/attn_norm/scale", (d,), (d,)),
        _reshape(p + "input_layernorm.bias", "layers/attn_norm/bias", (d,), (d,)),
        Entry(
            p + "attention.query_key_value.weight",
            ("layers/attn/wq", "layers/attn/wk", "layers/attn/wv"),
            (3 * n * h, d),
            split_w,
            lambda q, k, v: np.stack(
                [transpose(x.reshape(d, n * h)).reshape(n, h, d) for x in (q, k, v)], 1
            ).reshape(-1, d),
        ),
        _linear_out(p + "attention.dense.weight", "layers/attn/wo", (n, h), d),
        _reshape(p + "post_attention_layernorm.weight", "layers/mlp_norm/scale", (d,), (d,)),
        _reshape(p + "post_attention_layernorm.bias", "layers/mlp_norm/bias", (d,), (d,)),
        _linear_in(p + "mlp.dense_h_to_4h.weight", "layers/mlp/w_up", d, (f,)),
        _reshape(p + "mlp.dense_h_to_4h.bias", "layers/mlp/b_up", (f,), (f,)),
        _linear_out(p + "mlp.dense_4h_to_h.weight", "layers/mlp/w_down", (f,), d),
        _reshape(p + "mlp.dense_4h_to_h.bias", "layers/mlp/b_down", (d,), (d,)),
        _reshape("gpt_neox.final_layer_norm.weight", "final_norm/scale", (d,), (d,)),
        _reshape("gpt_neox.final_layer_norm.bias", "final_norm/bias", (d,), (d,)),
    ]
    if cfg.qkv_bias:
        out.append(
            Entry(
                p + "attention.query_key_value.bias",
                ("layers/attn/bq", "layers/attn/bk", "layers/attn/bv"),
                (3 * n * h,),
                split_b,
                lambda q, k, v: np.stack([q, k, v], 1).reshape(-1),
            )
        )
    if cfg.out_bias:
        out.append(_reshape(p + "attention.dense.bias", "layers/attn/bo", (d,), (d,)))
    if not cfg.tie_embeddings:
        out.append(_linear_in("embed_out.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out


# ---------------------------------------------------------------------------------------------
# Dispatch

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox")
# The base-model prefix that checkpoints saved from a bare base model (e.g. GPT2Model) omit.
BASE_PREFIX = {
    "gpt2": "transformer.",
    "llama": "model.",
    "mistral": "model.",
    "qwen2": "model.",
    "gemma": "model.",
    "gpt_neox": "gpt_neox.",
}
# Buffers some checkpoints store that carry no weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "attention.bias", "attention.masked_bias")
IGNORED_SUFFIXES += ("rotary_emb.inv_freq",)


def _check_family(model_type) -> None:
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"model_type {model_type!r} in config.json is not supported; "
            f"llmzoo converts {', '.join(FAMILIES)}"
        )


def config_from_hf(hf: dict) -> ModelConfig:
    """Builds the llmzoo config of a Hugging Face ``config.json`` dict."""
    model_type = hf.get("model_type")
    _check_family(model_type)
    try:
        if model_type == "gpt2":
            return _gpt2_from_hf(hf)
        if model_type == "gpt_neox":
            return _gpt_neox_from_hf(hf)
        return _llama_like_from_hf(hf)
    except KeyError as e:
        raise CheckpointError(
            f"{model_type} config.json lacks key {e.args[0]!r}; re-save it with transformers"
        ) from None


# Fields that do not change what a checkpoint computes at inference.
_TRAINING_ONLY = ("dropout", "init_std", "dtype", "remat")


def _canonical(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(
        cfg,
        n_kv_heads=cfg.kv_heads,
        head_dim=cfg.dim_per_head,
        rope_theta=cfg.rope_theta if cfg.position == "rope" else 0.0,
        rope_fraction=cfg.rope_fraction if cfg.position == "rope" else 1.0,
        rope_scaling=cfg.rope_scaling if cfg.position == "rope" else None,
        norm_bias=cfg.norm_bias if cfg.norm == "layernorm" else False,
        **{k: getattr(ModelConfig(), k) for k in _TRAINING_ONLY},
    )


def config_to_hf(cfg: ModelConfig) -> dict:
    """The Hugging Face ``config.json`` dict of an llmzoo config.

    Raises:
        ConfigError: the config uses a switch its family's Hugging Face model lacks (e.g. a
            sliding window on Llama); the message names the field.
    """
    try:
        _check_family(cfg.family)
    except CheckpointError as e:
        raise ConfigError(str(e).replace("in config.json ", "")) from None
    if cfg.family == "gpt2":
        hf = _gpt2_to_hf(cfg)
    elif cfg.family == "gpt_neox":
        hf = _gpt_neox_to_hf(cfg)
    else:
        hf = _llama_like_to_hf(cfg)
    back = _canonical(config_from_hf(hf))
    want = _canonical(cfg)
    for field in dataclasses.fields(ModelConfig):
        a, b = getattr(want, field.name), getattr(back, field.name)
        if a != b:
            raise ConfigError(
                f"model.{field.name}={a!r} cannot be expressed in a Hugging Face {cfg.family} "
                f"checkpoint (it would load as {b!r}); change it or pick another family"
            )
    return hf


def entries(cfg: ModelConfig) -> list[Entry]:
    """The tensor map of ``cfg``'s family."""
    if cfg.family == "gpt2":
        return _gpt2_entries(cfg)
    if cfg.family == "gpt_neox":
        return _gpt_neox_entries(cfg)
    return _llama_like_entries(cfg)
