"""Decoder-only transformer shared by GPT-2, Llama, Mistral, Qwen2, Gemma and GPT-NeoX.

Read top to bottom: param declarations, one block, the stack (``lax.scan`` over layers), then the
public ``apply`` (training/eval) and ``apply_cached`` (generation with a KV cache). The families
differ only in :class:`~llmzoo.config.ModelConfig` switches; their presets live beside this file.

Param tree (layers stacked on a leading axis L)::

    embed/table [V, D]            pos_embed/table [P, D]   (learned positions only)
    layers/attn_norm/{scale,bias} layers/attn/{wq,wk,wv,wo,bq,bk,bv,bo}
    layers/mlp_norm/{scale,bias}  layers/mlp/{w_up,w_gate,w_down,b_up,b_down}
    final_norm/{scale,bias}       lm_head/w [D, V]          (untied embeddings only)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llmzoo.config import ModelConfig
from llmzoo.layers import attention as attn_lib
from llmzoo.layers import positional
from llmzoo.layers.mlp import mlp, mlp_specs
from llmzoo.layers.norms import apply_norm, norm_specs
from llmzoo.params import ParamSpec, init_params, normal, stack
from llmzoo.sharding import constrain

ACT = ("batch", "seq", "embed")


def param_specs(cfg: ModelConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    d, std = cfg.d_model, cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layers)
    norm = dict(kind=cfg.norm, bias=cfg.norm_bias, zero_centered=cfg.norm_zero_centered)
    block = {
        "attn_norm": norm_specs(d, **norm),
        "attn": attn_lib.attention_specs(
            d,
            cfg.n_heads,
            cfg.kv_heads,
            cfg.dim_per_head,
            qkv_bias=cfg.qkv_bias,
            out_bias=cfg.out_bias,
            std=std,
            out_std=out_std,
        ),
        "mlp_norm": norm_specs(d, **norm),
        "mlp": mlp_specs(d, cfg.d_ff, cfg.mlp, bias=cfg.mlp_bias, std=std, out_std=out_std),
    }
    specs = {
        "embed": {
            "table": ParamSpec(
                (cfg.vocab_size, d), logical_axes=("vocab", "embed"), init=normal(std)
            )
        },
        "layers": stack(block, cfg.n_layers),
        "final_norm": norm_specs(d, **norm),
    }
    if cfg.position == "learned":
        specs["pos_embed"] = {
            "table": ParamSpec(
                (cfg.max_seq_len, d), logical_axes=(None, "embed"), init=normal(0.01)
            )
        }
    if not cfg.tie_embeddings:
        specs["lm_head"] = {
            "w": ParamSpec((d, cfg.vocab_size), logical_axes=("embed", "vocab"), init=normal(std))
        }
    return specs


def init(key: jax.Array, cfg: ModelConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


def _norm(params, x, cfg):
    return apply_norm(
        params, x, kind=cfg.norm, eps=cfg.norm_eps, zero_centered=cfg.norm_zero_centered
    )


def _dropout(x, rate, rng):
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _attention(p, x, positions, mask, bias, cfg, kv):
    """Self-attention of one block. ``x: [B, T, D]``; returns ``([B, T, D], (k, v))``."""
    q, k, v = attn_lib.qkv_projection(p, x)  # [B, T, N, H], [B, T, K, H]
    if cfg.position == "rope":
        inv_freq, factor = positional.rope_inv_freq(
            cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling
        )
        q = positional.apply_rope(q, positions, inv_freq, attention_factor=factor)
        k = positional.apply_rope(k, positions, inv_freq, attention_factor=factor)
    if kv is not None:  # decoding: write the new keys into the cache, attend over all of it
        cache_k, cache_v, index = kv
        k, v = attn_lib.update_kv_cache(cache_k, cache_v, k, v, index)
    o = attn_lib.dot_product_attention(q, k, v, mask=mask, bias=bias, scale=cfg.attn_scale)
    return attn_lib.out_projection(p, o), (k, v)


def _block(p, x, positions, mask, bias, cfg, rng, kv=None):
    """One pre-norm transformer block (sequential or parallel residual). ``x: [B, T, D]``."""
    r1, r2 = (None, None) if rng is None else jax.random.split(rng)
    h, new_kv = _attention(p["attn"], _norm(p["attn_norm"], x, cfg), positions, mask, bias, cfg, kv)
    h = _dropout(h, cfg.dropout, r1)
    if cfg.parallel_residual:
        m = mlp(p["mlp"], _norm(p["mlp_norm"], x, cfg), kind=cfg.mlp)
        x = x + h + _dropout(m, cfg.dropout, r2)
    else:
        x = x + h
        x = x + _dropout(mlp(p["mlp"], _norm(p["mlp_norm"], x, cfg), kind=cfg.mlp), cfg.dropout, r2)
    return constrain(x, ACT), new_kv


def _embed(params, tokens, positions, cfg, rng):
    """Token (+ position) embeddings. ``tokens: [B, T]`` -> ``[B, T, D]``."""
    dtype = jnp.dtype(cfg.dtype)
    x = params["embed"]["table"].astype(dtype)[tokens]
    if cfg.embed_scale:
        x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
    if cfg.position == "learned":
        x = x + params["pos_embed"]["table"].astype(dtype)[jnp.clip(positions, 0)]
    elif cfg.position == "sinusoidal":
        x = x + positional.sinusoidal(jnp.clip(positions, 0), cfg.d_model).astype(dtype)
    return constrain(_dropout(x, cfg.dropout, rng), ACT)


def _logits(params, x, cfg):
    """Final norm and LM head. ``x: [B, T, D]`` -> ``[B, T, V]`` float32."""
    x = _norm(params["final_norm"], x, cfg)
    if cfg.tie_embeddings:
        w = params["embed"]["table"].astype(x.dtype)
        return jnp.einsum("btd,vd->btv", x, w, preferred_element_type=jnp.float32)
    w = params["lm_head"]["w"].astype(x.dtype)
    return jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)


def _alibi(cfg, q_pos, k_pos):
    if cfg.position != "alibi":
        return None
    return positional.alibi_bias(positional.alibi_slopes(cfg.n_heads), q_pos, k_pos)


def apply(
    params: dict,
    tokens: jax.Array,
    *,
    cfg: ModelConfig,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    rng: jax.Array | None = None,
    return_hidden: bool = False,
):
    """Runs the model on full sequences (training and evaluation).

    Args:
        params: the param tree of :func:`param_specs`.
        tokens: ``[B, T]`` int token ids.
        cfg: the model config.
        positions: ``[B, T]`` positions (default ``0..T-1``); -1 marks padding.
        segment_ids: ``[B, T]`` document ids of packed rows; tokens attend within their segment.
            Padding is segment 0 (so with right padding, pass the attention mask here).
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        return_hidden: also return the residual stream after every block, ``[L, B, T, D]``.

    Returns:
        logits ``[B, T, V]`` float32 (and the hidden states if ``return_hidden``).
    """
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = attn_lib.attention_mask(
        positions,
        positions,
        window=cfg.sliding_window,
        q_segment=segment_ids,
        k_segment=segment_ids,
    )
    bias = _alibi(cfg, positions, positions)
    x = _embed(
        params,
        tokens,
        positions,
        cfg,
        None if rng is None else jax.random.fold_in(rng, 0),
    )

    def body(x, layer):
        p, i = layer
        layer_rng = None if rng is None else jax.random.fold_in(rng, i + 1)
        x, _ = _block(p, x, positions, mask, bias, cfg, layer_rng)
        return x, (x if return_hidden else None)

    if cfg.remat:
        body = jax.checkpoint(body)
    x, hidden = jax.lax.scan(body, x, (params["layers"], jnp.arange(cfg.n_layers)))
    logits = _logits(params, x, cfg)
    return (logits, hidden) if return_hidden else logits


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens.

    Returns:
        ``{'k', 'v': [L, B, S, K, H], 'pos': [B, S] int32 (-1 = empty), 'index': int32 scalar}``.
    """
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.n_layers, batch, max_len, cfg.kv_heads, cfg.dim_per_head)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "pos": jnp.full((batch, max_len), -1, jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def apply_cached(
    params: dict,
    tokens: jax.Array,
    cache: dict,
    *,
    cfg: ModelConfig,
    positions: jax.Array,
) -> tuple[jax.Array, dict]:
    """Runs T new tokens against a KV cache (prefill with T = prompt length, decode with T = 1).

    Args:
        params: the param tree.
        tokens: ``[B, T]`` new tokens.
        cache: from :func:`init_cache` or a previous call.
        cfg: the model config.
        positions: ``[B, T]`` their positions; -1 marks (left) padding, which is never attended.

    Returns:
        ``(logits [B, T, V] float32, updated cache)``.
    """
    index = cache["index"]
    k_pos = jax.lax.dynamic_update_slice(cache["pos"], positions.astype(jnp.int32), (0, index))
    mask = attn_lib.attention_mask(positions, k_pos, window=cfg.sliding_window)
    bias = _alibi(cfg, positions, k_pos)
    x = _embed(params, tokens, positions, cfg, None)

    def body(x, layer):
        p, ck, cv = layer
        x, (k, v) = _block(p, x, positions, mask, bias, cfg, None, kv=(ck, cv, index))
        return x, (k, v)

    x, (ks, vs) = jax.lax.scan(body, x, (params["layers"], cache["k"], cache["v"]))
    new_cache = {"k": ks, "v": vs, "pos": k_pos, "index": index + tokens.shape[1]}
    return _logits(params, x, cfg), new_cache


__all__ = ["param_specs", "init", "apply", "init_cache", "apply_cached"]
