"""Attention against a preallocated KV cache whose cost follows the filled length, not capacity.

A cache holds S slots per row, of which only the first ``length`` are written. Attending over all
S slots (a dense ``[B, N, T, S]`` softmax) makes every decoded token pay for the cache's capacity;
:func:`prefix_attention` instead walks the filled slots one block of keys at a time under a
``lax.fori_loop`` whose trip count is ``ceil(length / block)`` (a traced value: one compiled step
serves every length), accumulating the softmax online (Milakov & Gimelshein, 2018; FlashAttention,
Dao et al., 2022). Slots are never gathered or concatenated, so each block is read once.

Masks come from positions by the one rule of :func:`llmzoo.layers.attention.attention_mask`
(padding and empty slots carry position -1), so left-padded batches, sliding windows and ALiBi
behave exactly as on the dense path. A query that sees no key gets output 0, as elsewhere.

A layer's keys or values are either one float array or :class:`Int8Slots` (the decoder's
``kv_cache_dtype="int8"``): int8 values with a float32 scale per slot and head, written by
symmetric round to nearest (:func:`quantize_slots`) and dequantized one block at a time inside
the loop, so the float cache is never materialised: the block's integers are cast to the compute
dtype and its scales multiply the logits (keys) and the probabilities (values), which gives the
products of the dequantized block without writing it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.layers.attention import MaskRule, attention_mask
from llmzoo.layers.positional import alibi_bias
from llmzoo.layers.quant import symmetric_round

DECODE_BLOCK = 256  # keys per block of :func:`prefix_attention`
_NEG = float(jnp.finfo(jnp.float32).min)
_F32 = jnp.float32
INT8_MAX = 127


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int8Slots:
    """One layer's cached keys or values as int8, ``x ~= values * scale[..., None]``.

    Both leaves lead with the batch axis, so tree maps over a cache (row selection in beam
    search, ``lax.while_loop`` carries) treat them as they treat a float cache.

    Attributes:
        values: ``[B, K, S, H]`` int8 in ``[-127, 127]``.
        scale: ``[B, K, S]`` float32, ``max |x| / 127`` over H of each slot and head.
    """

    values: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def dtype(self):
        return self.values.dtype

    def dequantize(self, dtype=_F32) -> jax.Array:
        """``[B, K, S, H]`` in ``dtype``."""
        return (self.values.astype(_F32) * self.scale[..., None]).astype(dtype)


def empty_int8(shape: tuple[int, ...]) -> Int8Slots:
    """Zero int8 slots of ``shape [B, K, S, H]`` (scales ``[B, K, S]`` of 0)."""
    return Int8Slots(jnp.zeros(shape, jnp.int8), jnp.zeros(shape[:-1], _F32))


def quantize_slots(x: jax.Array) -> Int8Slots:
    """Symmetric round-to-nearest int8 of ``x [B, K, T, H]``, one scale per ``[B, K, T]`` entry.

    Each entry's error is at most half its scale (``max |x| / 254`` over H); an all-zero entry
    gets scale 0 and values 0.
    """
    q, scale = symmetric_round(x, -1, INT8_MAX)
    return Int8Slots(q, scale[..., 0])


def _write(cache, x: jax.Array, index: jax.Array):
    """``cache`` (``[B, K, S, H]`` or :class:`Int8Slots`) with ``x [B, T, K, H]`` at ``index``."""
    x = jnp.swapaxes(x, 1, 2)
    if isinstance(cache, Int8Slots):
        new = quantize_slots(x)
        return Int8Slots(
            jax.lax.dynamic_update_slice(cache.values, new.values, (0, 0, index, 0)),
            jax.lax.dynamic_update_slice(cache.scale, new.scale, (0, 0, index)),
        )
    return jax.lax.dynamic_update_slice(cache, x.astype(cache.dtype), (0, 0, index, 0))


def _scores(qg: jax.Array, kj) -> jax.Array:
    """``[B, K, G, T, s]`` float32 products of ``qg [B, T, K, G, H]`` with a block of keys; an
    int8 block is cast to the dtype of ``qg`` and its scales multiply the products."""
    if isinstance(kj, Int8Slots):
        logits = jnp.einsum(
            "btkgh,bksh->bkgts", qg, kj.values.astype(qg.dtype), preferred_element_type=_F32
        )
        return logits * kj.scale[:, :, None, None, :]
    return jnp.einsum("btkgh,bksh->bkgts", qg, kj, preferred_element_type=_F32)


def _weighted(p: jax.Array, vj, dtype) -> jax.Array:
    """``[B, K, G, T, H]`` float32: probabilities ``p [B, K, G, T, s]`` times a block of values;
    an int8 block's scales multiply ``p`` and its values are cast to ``dtype``."""
    if isinstance(vj, Int8Slots):
        p = (p * vj.scale[:, :, None, None, :]).astype(dtype)
        vj = vj.values.astype(dtype)
    else:
        p = p.astype(vj.dtype)
    return jnp.einsum("bkgts,bksh->bkgth", p, vj, preferred_element_type=_F32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CachePlan:
    """How every layer of one cached forward pass attends (built once, outside the layer loop).

    Attributes:
        rule: queries ``[B, T]`` and the whole cache's key positions ``[B, S]`` (after the write).
        length: int32 scalar, the filled slots ``[0, length)`` (the new tokens included).
        alibi_slopes: ``[N]`` ALiBi slopes, or None.
        block: at most this many keys per block (static; see :func:`_block_size`).
    """

    rule: MaskRule
    length: jax.Array
    alibi_slopes: jax.Array | None = None
    block: int = dataclasses.field(default=DECODE_BLOCK, metadata=dict(static=True))


def _block_mask(rule: MaskRule, start: jax.Array, first_new: jax.Array, size: int) -> jax.Array:
    """``[B, 1, 1, T, size]``: the rule on slots ``[start, start + size)``, minus those below
    ``first_new`` (already seen when the last block was shifted back to fit the cache)."""
    k_pos = jax.lax.dynamic_slice_in_dim(rule.k_pos, start, size, axis=1)
    k_pos = jnp.where(start + jnp.arange(size) >= first_new, k_pos, -1)
    k_seg = rule.k_segment
    if k_seg is not None:
        k_seg = jax.lax.dynamic_slice_in_dim(k_seg, start, size, axis=1)
    mask = attention_mask(
        rule.q_pos,
        k_pos,
        causal=rule.causal,
        window=rule.window,
        q_segment=rule.q_segment,
        k_segment=k_seg,
    )
    return mask[:, :, None]


def _block_size(s: int, block: int) -> int:
    """Keys per block for a cache of S slots: at most ``block``, and as even as
    ``ceil(S / block)`` blocks can be. With blocks of exactly ``block`` the last one would be
    shifted back to fit the cache and re-read up to ``block - 1`` slots seen already: a cache of
    308 slots filled to 260 read 512 slots a step, against 308 with blocks of 154."""
    return -(-s // -(-s // block))


def prefix_attention(
    q: jax.Array,
    cache_k: jax.Array | Int8Slots,
    cache_v: jax.Array | Int8Slots,
    plan: CachePlan,
    *,
    scale: float | None = None,
) -> jax.Array:
    """Softmax attention of ``q`` over the filled slots ``[0, plan.length)`` of a cache.

    Args:
        q: ``[B, T, N, H]``.
        cache_k, cache_v: ``[B, K, S, H]`` with N a multiple of K, float or :class:`Int8Slots`
            (dequantized a block at a time).
        plan: the mask rule (``k_pos [B, S]`` over the whole cache) and the filled length.
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``[B, T, N, H]`` in the dtype of ``q``; 0 for a query that sees no key.
    """
    b, t, n, h = q.shape
    kh, s = cache_k.shape[1], cache_k.shape[2]
    g, size = n // kh, _block_size(s, plan.block)
    scale = h**-0.5 if scale is None else scale
    qg = q.reshape(b, t, kh, g, h)
    q_pos = plan.rule.q_pos

    def block(j, carry):
        m, denom, acc = carry
        start = jnp.minimum(j * size, s - size)  # the last block may overlap the one before
        kj, vj = (
            jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=2), x)
            for x in (cache_k, cache_v)
        )
        mask = _block_mask(plan.rule, start, j * size, size)
        logits = _scores(qg, kj) * scale
        if plan.alibi_slopes is not None:
            k_pos = jax.lax.dynamic_slice_in_dim(plan.rule.k_pos, start, size, axis=1)
            logits = logits + alibi_bias(plan.alibi_slopes, q_pos, k_pos).reshape(logits.shape)
        m_new = jnp.maximum(m, jnp.max(jnp.where(mask, logits, _NEG), axis=-1))
        p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        pv = _weighted(p, vj, q.dtype)
        return m_new, denom * corr + p.sum(-1), acc * corr[..., None] + pv

    init = (
        jnp.full((b, kh, g, t), _NEG, _F32),
        jnp.zeros((b, kh, g, t), _F32),
        jnp.zeros((b, kh, g, t, h), _F32),
    )
    _, denom, acc = jax.lax.fori_loop(0, -(-plan.length // size), block, init)
    seen = denom > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, denom, 1.0)[..., None], 0.0)
    return jnp.einsum("bkgth->btkgh", out).reshape(b, t, n, h).astype(q.dtype)


def cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv: tuple,
    plan: CachePlan,
    *,
    scale: float | None = None,
) -> tuple[jax.Array, tuple]:
    """Writes T new keys/values into one layer's cache, then attends over its filled part.

    Args:
        q: ``[B, T, N, H]`` new queries.
        k, v: ``[B, T, K, H]`` new keys and values.
        kv: ``(cache_k, cache_v [B, K, S, H], index)``, index the first slot to write; the
            caches float or :class:`Int8Slots` (the new entries quantized as they are written).
        plan: from the cached forward pass (``plan.length`` = index + T).
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``(out [B, T, N, H], (cache_k, cache_v))`` with the new entries written.
    """
    cache_k, cache_v, index = kv
    cache_k, cache_v = _write(cache_k, k, index), _write(cache_v, v, index)
    return prefix_attention(q, cache_k, cache_v, plan, scale=scale), (cache_k, cache_v)


__all__ = [
    "DECODE_BLOCK",
    "CachePlan",
    "Int8Slots",
    "empty_int8",
    "quantize_slots",
    "prefix_attention",
    "cached_attention",
]
