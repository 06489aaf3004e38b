"""Kind ``seq2seq``: the encoder-decoder transformer of T5 (v1.0, v1.1) and BART.

Read top to bottom: the two stacks (``lax.scan`` over layers), then the protocol functions
``apply`` (training/eval), ``encode``, and ``init_cache``/``apply_cached``/``select_cache``
(generation: the cache holds the encoder's cross-attention keys and values). The params are
declared in :mod:`llmzoo.models.seq2seq_params`; the residual sub-layer (pre- or post-norm) and
the encoder and decoder blocks live in :mod:`llmzoo.models.seq2seq_blocks`. The families differ
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
from llmzoo.layers import attention_impl, heads, positional
from llmzoo.layers.cross_attention import cross_kv
from llmzoo.layers.remat import layer_loop
from llmzoo.layers.residual import dropout
from llmzoo.models import capture as capture_lib
from llmzoo.models.seq2seq_blocks import decoder_block, encoder_block, norm
from llmzoo.models.seq2seq_config import Seq2SeqConfig
from llmzoo.models.seq2seq_params import init, param_specs
from llmzoo.sharding import constrain, take_rows

ACT_AXES = ("batch", "seq", "embed")
CAPTURES = capture_lib.SEQ2SEQ
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
        x = norm(stack_params["embed_norm"], x, cfg)
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _relative_bias(stack_params, q_pos, k_pos, cfg, *, bidirectional):
    """T5's relative bias ``[B, N, T, S]`` of one stack, or None with learned positions."""
    if cfg.position != "relative":
        return None
    table, dist = stack_params["relative_bias"]["table"], cfg.relative_max_distance
    return positional.t5_bias(table, q_pos, k_pos, bidirectional=bidirectional, max_distance=dist)


def _finish(stack_params, x, cfg, rng):
    if cfg.final_norm:
        x = norm(stack_params["final_norm"], x, cfg)
    return dropout(x, cfg.dropout, rng)


def _arange(b, t):
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def _fold(rng, i):
    return None if rng is None else jax.random.fold_in(rng, i)


def _plan(cfg, rule, impl, *, self_attention=True):
    """An attention plan; T5's relative bias keeps self-attention dense."""
    if self_attention and cfg.position == "relative":
        impl = "dense"
    return attention_impl.plan_attention(
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
    return _encode(params, inputs, input_mask, cfg, rng)[0]


def _encode(params, inputs, input_mask, cfg, rng, capture=()):
    """:func:`encode`, also returning the ``capture`` (``attn_probs``, ``residual``) of the
    encoder stack as ``{name: [L_enc or L_enc + 1, ...]}``."""
    b, s = inputs.shape
    mask_ids = jnp.ones((b, s), jnp.int32) if input_mask is None else input_mask.astype(jnp.int32)
    pos = _arange(b, s)
    rule = attn_lib.MaskRule(pos, pos, mask_ids, mask_ids, causal=False)
    plan = _plan(cfg, rule, cfg.attention_impl)
    p = params["encoder"]
    bias = _relative_bias(p, pos, pos, cfg, bidirectional=True)
    x = x0 = _embed(params, p, inputs, pos, cfg, _fold(rng, 0))

    def body(x, layer):
        lp, i = layer
        taps = capture_lib.layer_taps(capture)
        return encoder_block(lp, x, plan, bias, cfg, _fold(rng, i + 1), taps), taps.captured

    xs = (p["layers"], jnp.arange(cfg.n_encoder_layers))
    x, captured = layer_loop(body, x, xs, policy=cfg.remat, scan=cfg.scan_layers)
    x = _finish(p, x, cfg, _fold(rng, cfg.n_encoder_layers + 1))
    return x, capture_lib.gather(x0, captured, capture)


def _cross_plan(q_pos, input_mask, cfg, impl):
    """Cross-attention's plan: decoder queries see the real (unpadded) source tokens."""
    k_pos = _arange(*input_mask.shape)
    q_seg, k_seg = jnp.ones_like(q_pos), input_mask.astype(q_pos.dtype)
    rule = attn_lib.MaskRule(q_pos, k_pos, q_seg, k_seg, causal=False)
    return _plan(cfg, rule, impl, self_attention=False)


def _decode(
    params, tokens, positions, masks, cross, cfg, rng, self_kv=None, capture=(), patch=None
):
    """The decoder stack and LM head: ``tokens [B, T]`` -> ``(logits [B, T, V], (k, v) | None,
    captured)``.

    ``masks`` = (self plan, k positions for the relative bias, cross plan); ``cross`` = the
    stacked cross-attention ``(k, v) [L, B, S, N, H]``; ``self_kv`` = (k, v, index) of a cache;
    ``capture`` and ``patch`` as in :func:`apply` (decoder names only).
    """
    self_plan, k_pos, cross_plan = masks
    p = params["decoder"]
    bias = _relative_bias(p, positions, k_pos, cfg, bidirectional=False)
    x = _embed(params, p, tokens, positions, cfg, _fold(rng, 0))
    index = None if self_kv is None else self_kv[2]
    x, layer_patch = capture_lib.enter(x, patch)
    x0 = x

    def body(x, layer):
        lp, ck, cv, i, kv, patch_i = layer
        ctx = (self_plan, bias, (ck, cv), cross_plan)
        kv = None if kv is None else (*kv, index)
        taps = capture_lib.layer_taps(capture, patch_i)
        x, new_kv = decoder_block(lp, x, ctx, cfg, _fold(rng, i + 1), kv, taps)
        return x, (None if kv is None else new_kv, taps.captured)

    xs = (
        p["layers"],
        *cross,
        jnp.arange(cfg.n_decoder_layers),
        None if self_kv is None else self_kv[:2],
        layer_patch,
    )
    x, (new_kv, captured) = layer_loop(body, x, xs, policy=cfg.remat, scan=cfg.scan_layers)
    x = _finish(p, x, cfg, _fold(rng, cfg.n_decoder_layers + 1))
    return _logits(params, x, cfg), new_kv, capture_lib.gather(x0, captured, capture)


def _logits(params, x, cfg):
    """LM head (with T5's output rescale and BART's logits bias). ``[B, T, D]`` -> ``[B, T, V]``."""
    if cfg.decoder_output_scale:
        x = x * jnp.asarray(cfg.d_model**-0.5, x.dtype)
    logits = heads.lm_head(params, x, tied=cfg.tie_embeddings)
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
    capture: tuple[str, ...] = (),
    patch: dict | None = None,
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
        capture: names of intermediates to return (static; :data:`CAPTURES`, shapes in
            :mod:`llmzoo.models.capture`); ``()`` compiles the same program as without it. The
            decoder's names are the decoder kind's (``attn_probs`` its causal self-attention,
            ``residual [L_dec + 1, B, T, D]`` ending before the final norm of T5), plus
            ``cross_attn_probs [L_dec, B, N, T, S]``, ``encoder_attn_probs [L_enc, B, N, S, S]``
            and ``encoder_residual [L_enc + 1, B, S, D]`` (its last row before T5's final norm).
        patch: ``{name: (values, where)}`` patches of the decoder's ``residual``, ``attn_out``
            (self-attention), ``mlp_out`` or ``head_out``, as in
            :func:`llmzoo.models.decoder.apply`.

    Returns:
        ``{'logits': [B, T, V] float32}``, plus ``'encoder_hidden': [B, S, D]`` if
        ``return_hidden`` and ``'captured'`` if ``capture``.

    Raises:
        ConfigError: a ``capture`` or ``patch`` name the kind does not have.
    """
    capture = capture_lib.check_capture("seq2seq", capture, patch, CAPTURES)
    enc_names = tuple(n.removeprefix("encoder_") for n in capture if n.startswith("encoder_"))
    input_mask = batch.get("input_mask")
    if input_mask is None:
        input_mask = jnp.ones(batch["inputs"].shape, jnp.int32)
    enc, enc_captured = _encode(params, batch["inputs"], input_mask, cfg, _fold(rng, 0), enc_names)
    tokens = batch["decoder_inputs"]
    pos = _arange(*tokens.shape)
    seg = batch.get("decoder_mask")
    seg = None if seg is None else seg.astype(jnp.int32)
    impl = cfg.attention_impl
    self_plan = _plan(cfg, attn_lib.MaskRule(pos, pos, seg, seg), impl)
    masks = (self_plan, pos, _cross_plan(pos, input_mask, cfg, impl))
    dec_names = tuple(n for n in capture if not n.startswith("encoder_"))
    cross = _all_cross_kv(params, enc)
    logits, _, captured = _decode(
        params, tokens, pos, masks, cross, cfg, _fold(rng, 1), None, dec_names, patch
    )
    out = {"logits": logits}
    if return_hidden:
        out["encoder_hidden"] = enc
    if capture:
        out["captured"] = captured | {f"encoder_{k}": v for k, v in enc_captured.items()}
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
    logits, (ks, vs), _ = _decode(params, tokens, positions, masks, cross, cfg, None, self_kv)
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
