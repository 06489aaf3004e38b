"""Kind ``seq2seq``: the encoder-decoder transformer of T5 (v1.0, v1.1) and BART.

Read top to bottom: param declarations, the residual sub-layer (pre- or post-norm), the encoder
and decoder blocks, the two stacks (``lax.scan`` over layers), then the protocol functions
``apply`` (training/eval), ``encode``, and ``init_cache``/``apply_cached``/``select_cache``
(generation: the cache holds the encoder's cross-attention keys and values). The families differ
only in :class:`Seq2SeqConfig` switches (defined in :mod:`llmzoo.models.seq2seq_config` and
re-exported here); their presets are data in :mod:`llmzoo.models.families`.

Param tree (layers stacked on a leading axis, L_enc and L_dec deep)::

    embed/table [V, D]                        (shared by encoder, decoder and a tied LM head)
    encoder/pos_embed/table [P + offset, D]   (learned positions)
    encoder/relative_bias/table [R, N]        (relative positions: T5 buckets, shared by layers)
    encoder/embed_norm/{scale,bias}           (BART layernorm_embedding)
    encoder/layers/{attn_norm,attn,mlp_norm,mlp}/...
    encoder/final_norm/{scale,bias}           (T5)
    decoder/...                               as encoder, plus layers/{cross_norm,cross_attn}
    lm_head/w [D, V]                          (untied embeddings only)
    final_logits_bias/bias [V]                (BART)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llmzoo.layers import attention as attn_lib
from llmzoo.layers import blockwise, positional
from llmzoo.layers.cross_attention import cross_attention, cross_kv
from llmzoo.layers.mlp import mlp, mlp_specs
from llmzoo.layers.norms import apply_norm, norm_specs
from llmzoo.layers.remat import remat
from llmzoo.layers.residual import dropout, residual
from llmzoo.models.seq2seq_config import Seq2SeqConfig
from llmzoo.params import ParamSpec, init_params, normal, stack, with_dtype, zeros
from llmzoo.sharding import constrain, take_rows

ACT_AXES = ("batch", "seq", "embed")
# ---------------------------------------------------------------------------------------------
# Params


def _stack_specs(cfg: Seq2SeqConfig, n_layers: int, *, cross: bool) -> dict:
    """The param specs of one stack (encoder, or decoder with ``cross`` attention)."""
    d, std = cfg.d_model, cfg.init_std
    out_std = std / math.sqrt(2 * n_layers)
    norm = dict(kind=cfg.norm, bias=cfg.bias)
    attn = dict(qkv_bias=cfg.bias, out_bias=cfg.bias, std=std, out_std=out_std)
    n, h = cfg.n_heads, cfg.dim_per_head
    block = {
        "attn_norm": norm_specs(d, **norm),
        "attn": attn_lib.attention_specs(d, n, n, h, **attn),
    }
    if cross:
        block["cross_norm"] = norm_specs(d, **norm)
        block["cross_attn"] = attn_lib.attention_specs(d, n, n, h, **attn)
    block["mlp_norm"] = norm_specs(d, **norm)
    block["mlp"] = mlp_specs(d, cfg.d_ff, cfg.mlp, bias=cfg.bias, std=std, out_std=out_std)
    specs = {"layers": stack(block, n_layers)}
    if cfg.position == "learned":
        rows = cfg.max_seq_len + cfg.position_offset
        specs["pos_embed"] = {
            "table": ParamSpec((rows, d), logical_axes=(None, "embed"), init=normal(0.01))
        }
    else:
        specs["relative_bias"] = {
            "table": ParamSpec(
                (cfg.relative_buckets, n), logical_axes=(None, "heads"), init=normal(std)
            )
        }
    if cfg.embed_norm:
        specs["embed_norm"] = norm_specs(d, **norm)
    if cfg.final_norm:
        specs["final_norm"] = norm_specs(d, **norm)
    return specs


def param_specs(cfg: Seq2SeqConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    d, v = cfg.d_model, cfg.vocab_size
    specs = {
        "embed": {
            "table": ParamSpec((v, d), logical_axes=("vocab", "embed"), init=normal(cfg.init_std))
        },
        "encoder": _stack_specs(cfg, cfg.n_encoder_layers, cross=False),
        "decoder": _stack_specs(cfg, cfg.n_decoder_layers, cross=True),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = {
            "w": ParamSpec((d, v), logical_axes=("embed", "vocab"), init=normal(cfg.init_std))
        }
    if cfg.final_logits_bias:
        specs["final_logits_bias"] = {"bias": ParamSpec((v,), logical_axes=("vocab",), init=zeros)}
    return with_dtype(specs, cfg.param_dtype)


def init(key: jax.Array, cfg: Seq2SeqConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


# ---------------------------------------------------------------------------------------------
# Blocks


def _norm(params, x, cfg):
    return apply_norm(params, x, kind=cfg.norm, eps=cfg.norm_eps)


def _split(rng, n):
    return (None,) * n if rng is None else tuple(jax.random.split(rng, n))


def _sublayer(norm_params, x, fn, cfg, rng):
    """``residual`` with this config's norm, norm position and dropout; ``x: [B, T, D]``."""
    norm = lambda h: _norm(norm_params, h, cfg)  # noqa: E731
    post = cfg.norm_position == "post"
    return residual(x, fn, norm, post_norm=post, rate=cfg.dropout, rng=rng)


def _self_attention(p, x, plan, bias, cfg, kv=None):
    """Self-attention, ``x [B, T, D]``; ``kv`` = (cache k, cache v, index) while decoding."""
    q, k, v = attn_lib.qkv_projection(p, x)
    if kv is not None:
        cache_k, cache_v, index = kv
        k, v = attn_lib.update_kv_cache(cache_k, cache_v, k, v, index)
    o = blockwise.attend(q, k, v, plan, bias=bias, scale=cfg.attn_scale)
    return attn_lib.out_projection(p, o), (k, v)


def _encoder_block(p, x, plan, bias, cfg, rng):
    """Self-attention and MLP over the source. ``x: [B, S, D]``."""
    r1, r2 = _split(rng, 2)
    attn = lambda h: _self_attention(p["attn"], h, plan, bias, cfg)  # noqa: E731
    x, _ = _sublayer(p["attn_norm"], x, attn, cfg, r1)
    x, _ = _sublayer(p["mlp_norm"], x, lambda h: (mlp(p["mlp"], h, kind=cfg.mlp), None), cfg, r2)
    return constrain(x, ACT_AXES)


def _decoder_block(p, x, ctx, cfg, rng, kv=None):
    """Causal self-attention, cross-attention and MLP. ``x: [B, T, D]``.

    ``ctx`` = (self plan, self bias, (cross k, cross v), cross plan); returns ``(x, (k, v))``.
    """
    self_plan, self_bias, cross, cross_plan = ctx
    r1, r2, r3 = _split(rng, 3)
    attn = lambda h: _self_attention(p["attn"], h, self_plan, self_bias, cfg, kv)  # noqa: E731
    x, new_kv = _sublayer(p["attn_norm"], x, attn, cfg, r1)
    xattn = lambda h: (  # noqa: E731
        cross_attention(p["cross_attn"], h, cross, cross_plan, scale=cfg.attn_scale),
        None,
    )
    x, _ = _sublayer(p["cross_norm"], x, xattn, cfg, r2)
    x, _ = _sublayer(p["mlp_norm"], x, lambda h: (mlp(p["mlp"], h, kind=cfg.mlp), None), cfg, r3)
    return constrain(x, ACT_AXES), new_kv


# ---------------------------------------------------------------------------------------------
# Stacks


def _embed(params, stack_params, tokens, positions, cfg, rng):
    """Token (+ learned position) embeddings of one stack. ``tokens: [B, T]`` -> ``[B, T, D]``."""
    dtype = cfg.compute_dtype
    x = take_rows(params["embed"]["table"].astype(dtype), tokens)
    if cfg.embed_scale:
        x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
    if cfg.position == "learned":
        rows = jnp.clip(positions, 0) + cfg.position_offset
        x = x + take_rows(stack_params["pos_embed"]["table"].astype(dtype), rows, None)
    if cfg.embed_norm:
        x = _norm(stack_params["embed_norm"], x, cfg)
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _relative_bias(stack_params, q_pos, k_pos, cfg, *, bidirectional):
    """T5's relative bias ``[B, N, T, S]`` of one stack, or None with learned positions."""
    if cfg.position != "relative":
        return None
    table, dist = stack_params["relative_bias"]["table"], cfg.relative_max_distance
    return positional.t5_bias(table, q_pos, k_pos, bidirectional=bidirectional, max_distance=dist)


def _finish(stack_params, x, cfg, rng):
    if cfg.final_norm:
        x = _norm(stack_params["final_norm"], x, cfg)
    return dropout(x, cfg.dropout, rng)


def _arange(b, t):
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def _fold(rng, i):
    return None if rng is None else jax.random.fold_in(rng, i)


def _plan(cfg, rule, impl, *, self_attention=True):
    """An attention plan; T5's relative bias keeps self-attention dense."""
    if self_attention and cfg.position == "relative":
        impl = "dense"
    return blockwise.plan_attention(
        rule, impl=impl, dtype=cfg.compute_dtype, head_dim=cfg.dim_per_head
    )


def encode(
    params: dict,
    inputs: jax.Array,
    input_mask: jax.Array | None = None,
    *,
    cfg: Seq2SeqConfig,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Runs the encoder. ``inputs [B, S]`` int, ``input_mask [B, S]`` (1 real, 0 padding).

    Returns:
        ``[B, S, D]`` in ``cfg.compute_dtype`` (rows at padding are not meaningful).
    """
    b, s = inputs.shape
    mask_ids = jnp.ones((b, s), jnp.int32) if input_mask is None else input_mask.astype(jnp.int32)
    pos = _arange(b, s)
    rule = attn_lib.MaskRule(pos, pos, mask_ids, mask_ids, causal=False)
    plan = _plan(cfg, rule, cfg.attention_impl)
    p = params["encoder"]
    bias = _relative_bias(p, pos, pos, cfg, bidirectional=True)
    x = _embed(params, p, inputs, pos, cfg, _fold(rng, 0))

    def body(x, layer):
        lp, i = layer
        return _encoder_block(lp, x, plan, bias, cfg, _fold(rng, i + 1)), None

    body = remat(body, cfg.remat)
    x, _ = jax.lax.scan(body, x, (p["layers"], jnp.arange(cfg.n_encoder_layers)))
    return _finish(p, x, cfg, _fold(rng, cfg.n_encoder_layers + 1))


def _cross_plan(q_pos, input_mask, cfg, impl):
    """Cross-attention's plan: decoder queries see the real (unpadded) source tokens."""
    k_pos = _arange(*input_mask.shape)
    q_seg, k_seg = jnp.ones_like(q_pos), input_mask.astype(q_pos.dtype)
    rule = attn_lib.MaskRule(q_pos, k_pos, q_seg, k_seg, causal=False)
    return _plan(cfg, rule, impl, self_attention=False)


def _decode(params, tokens, positions, masks, cross, cfg, rng, self_kv=None):
    """The decoder stack and LM head: ``tokens [B, T]`` -> ``(logits [B, T, V], (k, v) | None)``.

    ``masks`` = (self plan, k positions for the relative bias, cross plan); ``cross`` = the
    stacked cross-attention ``(k, v) [L, B, S, N, H]``; ``self_kv`` = (k, v, index) of a cache.
    """
    self_plan, k_pos, cross_plan = masks
    p = params["decoder"]
    bias = _relative_bias(p, positions, k_pos, cfg, bidirectional=False)
    x = _embed(params, p, tokens, positions, cfg, _fold(rng, 0))
    index = None if self_kv is None else self_kv[2]

    def body(x, layer):
        lp, ck, cv, i, kv = layer
        ctx = (self_plan, bias, (ck, cv), cross_plan)
        kv = None if kv is None else (*kv, index)
        x, new_kv = _decoder_block(lp, x, ctx, cfg, _fold(rng, i + 1), kv)
        return x, (None if kv is None else new_kv)

    body = remat(body, cfg.remat)
    xs = (
        p["layers"],
        *cross,
        jnp.arange(cfg.n_decoder_layers),
        None if self_kv is None else self_kv[:2],
    )
    x, new_kv = jax.lax.scan(body, x, xs)
    x = _finish(p, x, cfg, _fold(rng, cfg.n_decoder_layers + 1))
    return _logits(params, x, cfg), new_kv


def _logits(params, x, cfg):
    """LM head (with T5's output rescale and BART's logits bias). ``[B, T, D]`` -> ``[B, T, V]``."""
    if cfg.decoder_output_scale:
        x = x * jnp.asarray(cfg.d_model**-0.5, x.dtype)
    if cfg.tie_embeddings:
        w = params["embed"]["table"].astype(x.dtype)
        logits = jnp.einsum("btd,vd->btv", x, w, preferred_element_type=jnp.float32)
    else:
        w = params["lm_head"]["w"].astype(x.dtype)
        logits = jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)
    if cfg.final_logits_bias:
        logits = logits + params["final_logits_bias"]["bias"].astype(jnp.float32)
    return logits


def _all_cross_kv(params, enc):
    """Every decoder layer's cross-attention ``(k, v)``: ``[L, B, S, N, H]`` each."""
    return jax.vmap(cross_kv, in_axes=(0, None))(params["decoder"]["layers"]["cross_attn"], enc)


# ---------------------------------------------------------------------------------------------
# Protocol


def apply(
    params: dict,
    batch: dict,
    *,
    cfg: Seq2SeqConfig,
    rng: jax.Array | None = None,
    return_hidden: bool = False,
) -> dict:
    """Runs encoder and decoder on full sequences (training and evaluation, teacher forcing).

    Args:
        params: the param tree of :func:`param_specs`.
        batch: ``inputs [B, S]`` int source ids; optional ``input_mask [B, S]`` (1 real, 0
            padding); ``decoder_inputs [B, T]`` int (targets shifted right, starting with
            ``decoder_start_id``); optional ``decoder_mask [B, T]``.
        cfg: the model config.
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        return_hidden: also return the encoder output.

    Returns:
        ``{'logits': [B, T, V] float32}``, plus ``'encoder_hidden': [B, S, D]`` if
        ``return_hidden``.
    """
    input_mask = batch.get("input_mask")
    if input_mask is None:
        input_mask = jnp.ones(batch["inputs"].shape, jnp.int32)
    enc = encode(params, batch["inputs"], input_mask, cfg=cfg, rng=_fold(rng, 0))
    tokens = batch["decoder_inputs"]
    pos = _arange(*tokens.shape)
    seg = batch.get("decoder_mask")
    seg = None if seg is None else seg.astype(jnp.int32)
    impl = cfg.attention_impl
    self_plan = _plan(cfg, attn_lib.MaskRule(pos, pos, seg, seg), impl)
    masks = (self_plan, pos, _cross_plan(pos, input_mask, cfg, impl))
    logits, _ = _decode(params, tokens, pos, masks, _all_cross_kv(params, enc), cfg, _fold(rng, 1))
    out = {"logits": logits}
    if return_hidden:
        out["encoder_hidden"] = enc
    return out


def init_cache(params: dict, batch: dict, *, cfg: Seq2SeqConfig, max_len: int, dtype=None) -> dict:
    """Encodes the sources and allocates an empty self-attention cache of ``max_len`` tokens.

    Args:
        params: the param tree.
        batch: ``inputs [B, S]`` and optional ``input_mask [B, S]``.
        cfg: the model config.
        max_len: the most decoder tokens (start token included) a row will hold.
        dtype: cache dtype (default ``cfg.compute_dtype``).

    Returns:
        ``{'k', 'v': [L, B, max_len, N, H]`` (self-attention), ``'pos': [B, max_len]`` int32
        (-1 = empty), ``'index'``: int32 scalar (next slot), ``'cross_k', 'cross_v':
        [L, B, S, N, H]``, ``'input_mask': [B, S]`` int32}.
    """
    dtype = jnp.dtype(dtype or cfg.compute_dtype)
    inputs = batch["inputs"]
    b = inputs.shape[0]
    input_mask = batch.get("input_mask")
    input_mask = jnp.ones(inputs.shape, jnp.int32) if input_mask is None else input_mask
    enc = encode(params, inputs, input_mask, cfg=cfg)
    cross_k, cross_v = _all_cross_kv(params, enc)
    shape = (cfg.n_decoder_layers, b, max_len, cfg.n_heads, cfg.dim_per_head)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "pos": jnp.full((b, max_len), -1, jnp.int32),
        "index": jnp.zeros((), jnp.int32),
        "cross_k": cross_k.astype(dtype),
        "cross_v": cross_v.astype(dtype),
        "input_mask": input_mask.astype(jnp.int32),
    }


def select_cache(cache: dict, index: jax.Array) -> dict:
    """Gathers cache rows ``index [B']`` (beam search reorders and expands rows with it)."""
    out = {k: cache[k][:, index] for k in ("k", "v", "cross_k", "cross_v")}
    return out | {
        "pos": cache["pos"][index],
        "input_mask": cache["input_mask"][index],
        "index": cache["index"],
    }


def apply_cached(
    params: dict,
    tokens: jax.Array,
    cache: dict,
    *,
    cfg: Seq2SeqConfig,
    positions: jax.Array,
) -> tuple[jax.Array, dict]:
    """Runs T new decoder tokens against the cache (T = 1 while decoding).

    Args:
        params: the param tree.
        tokens: ``[B, T]`` new decoder tokens (the first call starts with ``decoder_start_id``).
        cache: from :func:`init_cache` or a previous call.
        cfg: the model config.
        positions: ``[B, T]`` their decoder positions (0 for the start token).

    Returns:
        ``(logits [B, T, V] float32, updated cache)``.
    """
    index = cache["index"]
    positions = positions.astype(jnp.int32)
    k_pos = jax.lax.dynamic_update_slice(cache["pos"], positions, (0, index))
    masks = (
        _plan(cfg, attn_lib.MaskRule(positions, k_pos), "dense"),
        k_pos,
        _cross_plan(positions, cache["input_mask"], cfg, "dense"),
    )
    cross = (cache["cross_k"], cache["cross_v"])
    self_kv = (cache["k"], cache["v"], index)
    logits, (ks, vs) = _decode(params, tokens, positions, masks, cross, cfg, None, self_kv)
    new = {"k": ks, "v": vs, "pos": k_pos, "index": index + tokens.shape[1]}
    return logits, cache | new


__all__ = [
    "Seq2SeqConfig",
    "param_specs",
    "init",
    "apply",
    "encode",
    "init_cache",
    "apply_cached",
    "select_cache",
]
