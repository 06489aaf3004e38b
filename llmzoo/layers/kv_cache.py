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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.layers.attention import MaskRule, attention_mask
from llmzoo.layers.positional import alibi_bias

DECODE_BLOCK = 256  # keys per block of :func:`prefix_attention`
_NEG = float(jnp.finfo(jnp.float32).min)
_F32 = jnp.float32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CachePlan:
    """How every layer of one cached forward pass attends (built once, outside the layer loop).

    Attributes:
        rule: queries ``[B, T]`` and the whole cache's key positions ``[B, S]`` (after the write).
        length: int32 scalar, the filled slots ``[0, length)`` (the new tokens included).
        alibi_slopes: ``[N]`` ALiBi slopes, or None.
        block: keys per block (static).
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


def prefix_attention(
    q: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    plan: CachePlan,
    *,
    scale: float | None = None,
) -> jax.Array:
    """Softmax attention of ``q`` over the filled slots ``[0, plan.length)`` of a cache.

    Args:
        q: ``[B, T, N, H]``.
        cache_k, cache_v: ``[B, K, S, H]`` with N a multiple of K.
        plan: the mask rule (``k_pos [B, S]`` over the whole cache) and the filled length.
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``[B, T, N, H]`` in the dtype of ``q``; 0 for a query that sees no key.
    """
    b, t, n, h = q.shape
    kh, s = cache_k.shape[1], cache_k.shape[2]
    g, size = n // kh, min(plan.block, s)
    scale = h**-0.5 if scale is None else scale
    qg = q.reshape(b, t, kh, g, h)
    q_pos = plan.rule.q_pos

    def block(j, carry):
        m, denom, acc = carry
        start = jnp.minimum(j * size, s - size)  # the last block may overlap the one before
        kj, vj = (jax.lax.dynamic_slice_in_dim(x, start, size, axis=2) for x in (cache_k, cache_v))
        mask = _block_mask(plan.rule, start, j * size, size)
        logits = jnp.einsum("btkgh,bksh->bkgts", qg, kj, preferred_element_type=_F32) * scale
        if plan.alibi_slopes is not None:
            k_pos = jax.lax.dynamic_slice_in_dim(plan.rule.k_pos, start, size, axis=1)
            logits = logits + alibi_bias(plan.alibi_slopes, q_pos, k_pos).reshape(logits.shape)
        m_new = jnp.maximum(m, jnp.max(jnp.where(mask, logits, _NEG), axis=-1))
        p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum("bkgts,bksh->bkgth", p.astype(vj.dtype), vj, preferred_element_type=_F32)
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
    kv: tuple[jax.Array, jax.Array, jax.Array],
    plan: CachePlan,
    *,
    scale: float | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Writes T new keys/values into one layer's cache, then attends over its filled part.

    Args:
        q: ``[B, T, N, H]`` new queries.
        k, v: ``[B, T, K, H]`` new keys and values.
        kv: ``(cache_k, cache_v [B, K, S, H], index)``, index the first slot to write.
        plan: from the cached forward pass (``plan.length`` = index + T).
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``(out [B, T, N, H], (cache_k, cache_v))`` with the new entries written.
    """
    cache_k, cache_v, index = kv
    start = (0, 0, index, 0)
    cache_k, cache_v = (
        jax.lax.dynamic_update_slice(c, jnp.swapaxes(x, 1, 2).astype(c.dtype), start)
        for c, x in ((cache_k, k), (cache_v, v))
    )
    return prefix_attention(q, cache_k, cache_v, plan, scale=scale), (cache_k, cache_v)


__all__ = ["DECODE_BLOCK", "CachePlan", "prefix_attention", "cached_attention"]
