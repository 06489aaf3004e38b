"""Kind ``decoder``: the decoder-only transformer of GPT-2, Llama, Mistral, Qwen2, Gemma, GPT-NeoX,
BLOOM.

Read top to bottom: the config, param declarations, one block, the stack (``lax.scan`` over
layers), then the protocol functions ``apply`` (training/eval), ``init_cache`` and
``apply_cached`` (generation with a KV cache). The families differ only in
:class:`DecoderConfig` switches; their presets are data in :mod:`llmzoo.models.families`.

Param tree (layers stacked on a leading axis L)::

    embed/table [V, D]            pos_embed/table [P, D]   (learned positions only)
    embed_norm/{scale,bias}       (embed_norm only)
    layers/attn_norm/{scale,bias} layers/attn/{wq,wk,wv,wo,bq,bk,bv,bo}
    layers/mlp_norm/{scale,bias}  layers/mlp/{w_up,w_gate,w_down,b_up,b_down}
    final_norm/{scale,bias}       lm_head/w [D, V]          (untied embeddings only)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llmzoo.errors import DataError
from llmzoo.layers import attention as attn_lib
from llmzoo.layers import attention_impl, heads, kv_cache, positional
from llmzoo.layers.mlp import mlp, mlp_specs
from llmzoo.layers.norms import apply_norm, norm_specs
from llmzoo.layers.remat import layer_loop
from llmzoo.layers.residual import dropout
from llmzoo.models import capture as capture_lib
from llmzoo.models.decoder_cache import (
    cache_plan,
    empty_cache,
    layer_params,
    select_rows,
    unstack_layers,
)
from llmzoo.models.decoder_config import DecoderConfig
from llmzoo.params import ParamSpec, init_params, normal, stack, with_dtype, zeros
from llmzoo.sharding import constrain, take_rows

ACT_AXES = ("batch", "seq", "embed")
NO_TAPS = capture_lib.NO_TAPS
CAPTURES = capture_lib.DECODER


def param_specs(cfg: DecoderConfig) -> dict:
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
    if cfg.embed_norm:
        specs["embed_norm"] = norm_specs(d, **norm)
    if cfg.position == "learned":
        specs["pos_embed"] = {
            "table": ParamSpec(
                (cfg.max_seq_len, d), logical_axes=(None, "embed"), init=normal(0.01)
            )
        }
    if cfg.head == "lm" and not cfg.tie_embeddings:
        specs["lm_head"] = {
            "w": ParamSpec((d, cfg.vocab_size), logical_axes=("embed", "vocab"), init=normal(std))
        }
    return with_dtype(specs | _head_specs(cfg), cfg.param_dtype)


def _head_specs(cfg: DecoderConfig) -> dict:
    """The classification (``score``) and value heads of ``cfg``, if any."""
    d, c, std = cfg.d_model, cfg.num_labels, cfg.init_std
    specs = {}
    if cfg.head != "lm":
        specs["score"] = {"w": ParamSpec((d, c), logical_axes=("embed", None), init=normal(std))}
    if cfg.head == "token_classification":
        specs["score"]["b"] = ParamSpec((c,), logical_axes=(None,), init=zeros)
    if cfg.value_head:
        specs["value_head"] = {
            "w": ParamSpec((d, 1), logical_axes=("embed", None), init=normal(std)),
            "b": ParamSpec((1,), logical_axes=(None,), init=zeros),
        }
    return specs


def init(key: jax.Array, cfg: DecoderConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


def _norm(params, x, cfg):
    return apply_norm(
        params, x, kind=cfg.norm, eps=cfg.norm_eps, zero_centered=cfg.norm_zero_centered
    )


def _attention(p, x, positions, plan, cfg, kv, taps=NO_TAPS):
    """Self-attention of one block. ``x: [B, T, D]``; returns ``([B, T, D], (k, v))``."""
    q, k, v = attn_lib.qkv_projection(p, x)  # [B, T, N, H], [B, T, K, H]
    if cfg.position == "rope":
        inv_freq, factor = positional.rope_inv_freq(
            cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling
        )
        q = positional.apply_rope(q, positions, inv_freq, attention_factor=factor)
        k = positional.apply_rope(k, positions, inv_freq, attention_factor=factor)
    if kv is not None:  # decoding: write the new keys, attend over the filled slots
        o, (k, v) = kv_cache.cached_attention(q, k, v, kv, plan, scale=cfg.attn_scale)
    else:
        o = attention_impl.attend(q, k, v, plan, scale=cfg.attn_scale)
        if taps.needs("attn_probs"):
            taps("attn_probs", attention_impl.attention_probs(q, k, plan, scale=cfg.attn_scale))
    o = taps("head_out", o)
    return taps("attn_out", attn_lib.out_projection(p, o)), (k, v)


def _block(p, x, positions, plan, cfg, rng, kv=None, taps=NO_TAPS):
    """One pre-norm transformer block (sequential or parallel residual). ``x: [B, T, D]``;
    ``taps`` (:class:`llmzoo.models.capture.Taps`) captures and patches its intermediates."""
    r1, r2 = (None, None) if rng is None else jax.random.split(rng)
    h, new_kv = _attention(p["attn"], _norm(p["attn_norm"], x, cfg), positions, plan, cfg, kv, taps)
    h = dropout(h, cfg.dropout, r1)
    if cfg.parallel_residual:
        m = taps("mlp_out", mlp(p["mlp"], _norm(p["mlp_norm"], x, cfg), kind=cfg.mlp))
        x = x + h + dropout(m, cfg.dropout, r2)
    else:
        x = x + h
        m = taps("mlp_out", mlp(p["mlp"], _norm(p["mlp_norm"], x, cfg), kind=cfg.mlp))
        x = x + dropout(m, cfg.dropout, r2)
    return taps("residual", constrain(x, ACT_AXES)), new_kv


def _embed(params, tokens, positions, cfg, rng):
    """Token (+ position) embeddings, then the embedding norm. ``[B, T]`` -> ``[B, T, D]``."""
    dtype = cfg.compute_dtype
    x = take_rows(params["embed"]["table"].astype(dtype), tokens)
    if cfg.embed_scale:
        x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
    if cfg.position == "learned":
        x = x + take_rows(params["pos_embed"]["table"].astype(dtype), jnp.clip(positions, 0), None)
    elif cfg.position == "sinusoidal":
        x = x + positional.sinusoidal(jnp.clip(positions, 0), cfg.d_model).astype(dtype)
    if cfg.embed_norm:
        x = _norm(params["embed_norm"], x, cfg)
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _logits(params, x, cfg, dtype=jnp.float32):
    """Final norm and LM head. ``x: [B, T, D]`` -> ``[B, T, V]`` in ``dtype``."""
    x = _norm(params["final_norm"], x, cfg)
    return heads.lm_head(params, x, tied=cfg.tie_embeddings, dtype=dtype)


def decode_hidden(params: dict, h: jax.Array, *, cfg: DecoderConfig) -> jax.Array:
    """The final norm and LM head on residual-stream states (the logit lens).

    ``h: [..., T, D]`` (e.g. the ``[L + 1, B, T, D]`` ``residual`` capture) -> float32
    ``[..., T, V]``; on the last residual row it gives the logits of :func:`apply`.
    """
    flat = h.reshape((-1,) + h.shape[-2:])
    return _logits(params, flat, cfg).reshape(h.shape[:-1] + (cfg.vocab_size,))


def last_real_index(segment_ids: jax.Array | None, t: int, b: int) -> jax.Array:
    """``[B]``: each row's last position whose ``segment_ids [B, T]`` is non-zero (T - 1 for
    every row without ``segment_ids``, and for a row of padding only)."""
    if segment_ids is None:
        return jnp.full((b,), t - 1, jnp.int32)
    from_end = jnp.argmax(segment_ids[:, ::-1] != 0, axis=-1)
    return (t - 1 - from_end).astype(jnp.int32)


def _heads(params, h, segment_ids, cfg) -> dict:
    """The outputs of ``cfg.head`` (and the value head) from final-normed states ``h [B, T, D]``:
    ``logits`` ``[B, T, V]`` (lm, compute dtype), ``[B, C]`` (sequence_classification, the last
    real token of each row) or ``[B, T, C]`` (token_classification); ``values [B, T]``."""
    f32 = jnp.float32
    out = {"final_hidden": h}
    if cfg.head == "lm":
        out["logits"] = heads.lm_head(params, h, tied=cfg.tie_embeddings, dtype=cfg.compute_dtype)
    elif cfg.head == "sequence_classification":
        b, t = h.shape[:2]
        pooled = h[jnp.arange(b), last_real_index(segment_ids, t, b)]
        w = params["score"]["w"].astype(h.dtype)
        out["logits"] = jnp.einsum("bd,dc->bc", pooled, w, preferred_element_type=f32)
    else:
        w, bias = params["score"]["w"].astype(h.dtype), params["score"]["b"].astype(f32)
        out["logits"] = jnp.einsum("btd,dc->btc", h, w, preferred_element_type=f32) + bias
    if cfg.value_head:
        w, bias = params["value_head"]["w"].astype(h.dtype), params["value_head"]["b"].astype(f32)
        out["values"] = (jnp.einsum("btd,do->bto", h, w, preferred_element_type=f32) + bias)[..., 0]
    return out


def _plan(cfg, rule, impl):
    """The attention plan of one forward pass (mask, ALiBi) for ``impl``."""
    slopes = positional.alibi_slopes(cfg.n_heads) if cfg.position == "alibi" else None
    return attention_impl.plan_attention(
        rule, impl=impl, dtype=cfg.compute_dtype, head_dim=cfg.dim_per_head, alibi_slopes=slopes
    )


def _check_length(length: int, cfg: DecoderConfig, what: str, fix: str) -> None:
    """Raises DataError when ``length`` (static: a shape, known at trace time) exceeds the
    learned position table, whose lookup would otherwise clamp silently."""
    limit = cfg.position_limit
    if limit is not None and length > limit:
        raise DataError(
            f"{what} of {length} tokens exceeds the {limit} learned positions "
            f"(model.max_seq_len={limit}); {fix} to at most {limit} tokens"
        )


def apply(
    params: dict,
    batch: dict,
    *,
    cfg: DecoderConfig,
    rng: jax.Array | None = None,
    return_hidden: bool = False,
    capture: tuple[str, ...] = (),
    patch: dict | None = None,
) -> dict:
    """Runs the model on full sequences (training and evaluation).

    Args:
        params: the param tree of :func:`param_specs`.
        batch: ``tokens [B, T]`` int ids; optional ``positions [B, T]`` (default ``0..T-1``; -1
            marks padding) and ``segment_ids [B, T]`` (document ids of packed rows: tokens attend
            within their segment; padding is segment 0, so with right padding pass the attention
            mask here).
        cfg: the model config.
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        return_hidden: also return the residual stream after every block.
        capture: names of intermediates to return (static; :data:`CAPTURES`, shapes in
            :mod:`llmzoo.models.capture`); ``()`` compiles the same program as without it.
        patch: ``{name: (values, where)}`` activation patches (``residual``, ``attn_out``,
            ``mlp_out``, ``head_out``): the values, shaped as their capture, replace the
            model's own where the bool ``where`` (the capture's shape without its trailing
            feature dims, e.g. ``[L + 1, B, T]`` for ``residual``) is True.

    Returns:
        ``'logits'``: by ``cfg.head``, ``[B, T, V]`` in the compute dtype (``lm``; a loss takes
        its log-softmax in float32), ``[B, C]`` (``sequence_classification``: the last token
        whose ``segment_ids`` is non-zero, so pad on the right) or ``[B, T, C]``
        (``token_classification``), both float32; ``'final_hidden' [B, T, D]`` (after the final
        norm); ``'values' [B, T]`` float32 with ``cfg.value_head``; ``'hidden' [L, B, T, D]``
        (each block's output) if ``return_hidden``; ``'captured'``: ``{name: [L or L + 1, ...]}``
        if ``capture``.

    Raises:
        DataError: learned positions and T > ``cfg.max_seq_len``.
        ConfigError: a ``capture`` or ``patch`` name the decoder does not have.
    """
    capture = capture_lib.check_capture("decoder", capture, patch, CAPTURES)
    tokens = batch["tokens"]
    b, t = tokens.shape
    _check_length(t, cfg, "a sequence", "cut it")
    positions = batch.get("positions")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    segment_ids = batch.get("segment_ids")
    rule = attn_lib.MaskRule(
        positions, positions, segment_ids, segment_ids, window=cfg.sliding_window
    )
    plan = _plan(cfg, rule, cfg.attention_impl)
    x = _embed(params, tokens, positions, cfg, None if rng is None else jax.random.fold_in(rng, 0))
    x, layer_patch = capture_lib.enter(x, patch)
    x0 = x

    def body(x, layer):
        p, i, patch_i = layer
        layer_rng = None if rng is None else jax.random.fold_in(rng, i + 1)
        taps = capture_lib.layer_taps(capture, patch_i)
        x, _ = _block(p, x, positions, plan, cfg, layer_rng, taps=taps)
        return x, (x if return_hidden else None, taps.captured)

    xs = (params["layers"], jnp.arange(cfg.n_layers), layer_patch)
    x, (hidden, captured) = layer_loop(body, x, xs, policy=cfg.remat, scan=cfg.scan_layers)
    out = _heads(params, _norm(params["final_norm"], x, cfg), segment_ids, cfg)
    if return_hidden:
        out["hidden"] = hidden
    if capture:
        out["captured"] = capture_lib.gather(x0, captured, capture)
    return out


def init_cache(params: dict, batch: dict, *, cfg: DecoderConfig, max_len: int, dtype=None) -> dict:
    """An empty KV cache for the ``batch`` of prompts, holding up to ``max_len`` tokens a row.

    Args:
        params: unused (the protocol passes them for kinds whose cache depends on them).
        batch: the prompt batch; only the batch size B of ``tokens [B, P]`` is read.
        cfg: the model config.
        max_len: S, the most tokens (prompt + generated) a row will hold.
        dtype: cache dtype (default ``cfg.compute_dtype``; ``bfloat16`` halves its memory traffic);
            ignored when ``cfg.kv_cache_dtype`` is ``int8``.

    Returns:
        ``{'k', 'v': L-tuples of [B, K, S, H], 'pos': [B, S] int32 (-1 = empty), 'index': int32
        scalar}`` (see :mod:`llmzoo.models.decoder_cache`); with ``kv_cache_dtype="int8"`` the
        keys and values are :class:`llmzoo.layers.kv_cache.Int8Slots`.

    Raises:
        DataError: learned positions and S > ``cfg.max_seq_len``.
    """
    del params
    _check_length(max_len, cfg, "a KV cache", "limit prompt + max_new_tokens")
    b = batch["tokens"].shape[0]
    if cfg.kv_cache_dtype == "int8":
        dtype = jnp.int8
    return empty_cache(cfg, b, max_len, jnp.dtype(dtype or cfg.compute_dtype))


def select_cache(cache: dict, index: jax.Array) -> dict:
    """Gathers cache rows ``index [B']`` (beam search reorders and expands rows with it)."""
    return select_rows(cache, index)


def decode_params(params: dict, *, cfg: DecoderConfig) -> dict:
    """``params`` laid out for :func:`apply_cached`: per-layer weights as separate buffers, the
    query, key and value weights fused into one matrix (:func:`~llmzoo.layers.attention.fuse_qkv`).

    Optional: :func:`apply_cached` also takes the stacked tree. Decoding loops call it once,
    before the loop (see :func:`llmzoo.models.decoder_cache.unstack_layers`).
    """
    params = unstack_layers(params, cfg.n_layers)
    layers = tuple(p | {"attn": attn_lib.fuse_qkv(p["attn"])} for p in params["layers"])
    return params | {"layers": layers}


def apply_cached(
    params: dict,
    tokens: jax.Array,
    cache: dict,
    *,
    cfg: DecoderConfig,
    positions: jax.Array,
) -> tuple[jax.Array, dict]:
    """Runs T new tokens against a KV cache (prefill with T = prompt length, decode with T = 1).

    Attention reads only the cache's filled slots, so a step costs the current length, not
    the capacity; layers run in a Python loop so that each layer's cache is updated in place.

    Args:
        params: the param tree, stacked or from :func:`decode_params`.
        tokens: ``[B, T]`` new tokens.
        cache: from :func:`init_cache` or a previous call.
        cfg: the model config.
        positions: ``[B, T]`` their positions; -1 marks (left) padding, which is never attended.

    Returns:
        ``(logits [B, T, V] float32, updated cache)``.
    """
    index = cache["index"]
    positions = positions.astype(jnp.int32)
    k_pos = jax.lax.dynamic_update_slice(cache["pos"], positions, (0, index))
    plan = cache_plan(cfg, positions, k_pos, index + tokens.shape[1])
    x = _embed(params, tokens, positions, cfg, None)
    ks, vs = [], []
    for i, p in enumerate(layer_params(params["layers"], cfg.n_layers)):
        kv = (cache["k"][i], cache["v"][i], index)
        x, (k, v) = _block(p, x, positions, plan, cfg, None, kv=kv)
        ks.append(k)
        vs.append(v)
    new_cache = {"k": tuple(ks), "v": tuple(vs), "pos": k_pos, "index": index + tokens.shape[1]}
    return _logits(params, x, cfg), new_cache


__all__ = [
    "DecoderConfig",
    "param_specs",
    "init",
    "apply",
    "init_cache",
    "apply_cached",
    "select_cache",
    "decode_params",
    "decode_hidden",
]
