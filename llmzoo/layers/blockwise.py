"""Memory-efficient attention: flash attention in pure JAX, for any backend.

:func:`blockwise_attention` is flash attention in pure JAX (Rabe & Staats, 2021, "Self-attention
does not need O(n^2) memory"; Dao, 2023, FlashAttention-2): queries and keys are cut into blocks,
the softmax is accumulated online over key blocks, and a ``jax.custom_vjp`` saves only q, k, v,
the output and each row's logsumexp, recomputing the block probabilities in the backward pass.
Memory grows as O(T + S), not O(T S). The mask of each block is computed from positions and
segment ids by the one rule of :func:`llmzoo.layers.attention.attention_mask`, never
materialised at [T, S]; blocks with no visible pair (the future under a causal mask, keys beyond a
sliding window) are skipped. Grouped KV heads are used in place (q viewed as [B, T, K, N/K, H]),
never repeated. A query that sees no key (a padding row) gets output 0 and zero gradients, as
:func:`~llmzoo.layers.attention.dot_product_attention` does.

``model.attention_impl=blockwise`` selects it; :mod:`llmzoo.layers.attention_impl` holds the switch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from llmzoo.layers.attention import MaskRule, attention_mask
from llmzoo.layers.positional import alibi_bias

DEFAULT_BLOCK = 512
_NEG = float(jnp.finfo(jnp.float32).min)
_F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# The blockwise kernel. Inside it q is [B, T, K, G, H] (G = N / K), k and v are [B, S, K, H],
# logits and probabilities of one block are [B, K, G, bq, bk], row statistics [B, K, G, bq].


class _Static(NamedTuple):
    causal: bool
    window: int | None
    scale: float
    block_q: int
    block_k: int


def _slice(x, i, size):
    """Block ``i`` of ``x [B, L, ...]`` along axis 1 (None stays None)."""
    return None if x is None else jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _block_mask(st, q_pos, k_pos, q_seg, k_seg):
    mask = attention_mask(
        q_pos, k_pos, causal=st.causal, window=st.window, q_segment=q_seg, k_segment=k_seg
    )
    return mask[:, :, None]  # [B, 1, 1, bq, bk]


def _block_logits(st, q, k, q_pos, k_pos, slopes):
    """Scaled logits (+ ALiBi) of one block: ``[B, K, G, bq, bk]`` float32."""
    s = jnp.einsum("bqkgh,bskh->bkgqs", q, k, preferred_element_type=_F32) * st.scale
    if slopes is not None:
        s = s + alibi_bias(slopes, q_pos, k_pos).reshape(s.shape)
    return s


def _forward(st, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes):
    """Output ``[B, T, K, G, H]`` and logsumexp ``[T / bq, B, K, G, bq]`` (0 on empty rows)."""
    b, t, kh, g, h = q.shape
    bq, bk = st.block_q, st.block_k

    def q_block(_, i):
        qi, qpi, qsi = (_slice(x, i, bq) for x in (q, q_pos, q_seg))

        def k_block(carry, j):
            kj, vj, kpj, ksj = (_slice(x, j, bk) for x in (k, v, k_pos, k_seg))
            mask = _block_mask(st, qpi, kpj, qsi, ksj)

            def update(carry):
                m, denom, acc = carry
                s = _block_logits(st, qi, kj, qpi, kpj, slopes)
                m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, _NEG), axis=-1))
                p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                pv = jnp.einsum(
                    "bkgqs,bskh->bkgqh", p.astype(v.dtype), vj, preferred_element_type=_F32
                )
                return m_new, denom * corr + p.sum(-1), acc * corr[..., None] + pv

            return jax.lax.cond(jnp.any(mask), update, lambda c: c, carry), None

        init = (
            jnp.full((b, kh, g, bq), _NEG, _F32),
            jnp.zeros((b, kh, g, bq), _F32),
            jnp.zeros((b, kh, g, bq, h), _F32),
        )
        (m, denom, acc), _ = jax.lax.scan(k_block, init, jnp.arange(k.shape[1] // bk))
        seen = denom > 0
        safe = jnp.where(seen, denom, 1.0)
        out = jnp.where(seen[..., None], acc / safe[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(safe), 0.0)
        return None, (jnp.einsum("bkgqh->bqkgh", out).astype(q.dtype), lse)

    _, (out, lse) = jax.lax.scan(q_block, None, jnp.arange(t // bq))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape), lse


def _backward(st, res, d_out):
    """FlashAttention-2's backward: ``(dq, dk, dv)``, recomputing each block's probabilities."""
    q, k, v, q_pos, k_pos, q_seg, k_seg, slopes, out, lse = res
    b, t, kh, g, h = q.shape
    bq, bk = st.block_q, st.block_k
    delta = jnp.sum(d_out.astype(_F32) * out.astype(_F32), axis=-1)  # [B, T, K, G]
    delta = jnp.transpose(delta.reshape(b, t // bq, bq, kh, g), (1, 0, 3, 4, 2))

    def k_block(dq, j):
        kj, vj, kpj, ksj = (_slice(x, j, bk) for x in (k, v, k_pos, k_seg))

        def q_block(carry, xs):
            i, lse_i, delta_i = xs
            qi, doi, qpi, qsi = (_slice(x, i, bq) for x in (q, d_out, q_pos, q_seg))
            mask = _block_mask(st, qpi, kpj, qsi, ksj)

            def grads(carry):
                dk, dv = carry
                s = _block_logits(st, qi, kj, qpi, kpj, slopes)
                p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
                dv = dv + jnp.einsum(
                    "bkgqs,bqkgh->bskh", p.astype(doi.dtype), doi, preferred_element_type=_F32
                )
                dp = jnp.einsum("bqkgh,bskh->bkgqs", doi, vj, preferred_element_type=_F32)
                ds = (p * (dp - delta_i[..., None]) * st.scale).astype(q.dtype)
                dq_i = jnp.einsum("bkgqs,bskh->bqkgh", ds, kj, preferred_element_type=_F32)
                dk = dk + jnp.einsum("bkgqs,bqkgh->bskh", ds, qi, preferred_element_type=_F32)
                return (dk, dv), dq_i

            skip = lambda c: (c, jnp.zeros((b, bq, kh, g, h), _F32))
            return jax.lax.cond(jnp.any(mask), grads, skip, carry)

        init = (jnp.zeros((b, bk, kh, h), _F32),) * 2
        (dk, dv), dq_j = jax.lax.scan(q_block, init, (jnp.arange(t // bq), lse, delta))
        return dq + dq_j, (dk, dv)

    dq0 = jnp.zeros((t // bq, b, bq, kh, g, h), _F32)
    dq, (dk, dv) = jax.lax.scan(k_block, dq0, jnp.arange(k.shape[1] // bk))
    dq = jnp.moveaxis(dq, 0, 1).reshape(q.shape)
    dk, dv = (jnp.moveaxis(x, 0, 1).reshape(k.shape) for x in (dk, dv))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes):
    return _forward(st, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes)[0]


def _flash_fwd(st, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes):
    out, lse = _forward(st, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes)
    return out, (q, k, v, q_pos, k_pos, q_seg, k_seg, slopes, out, lse)


def _flash_bwd(st, res, d_out):
    # positions, segment ids and ALiBi slopes are constants: no cotangent
    return (*_backward(st, res, d_out), None, None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _blocking(length: int, block: int) -> tuple[int, int]:
    """(block size, padded length): the fewest blocks of at most ``block``, evened out."""
    n = -(-length // block)
    size = -(-length // n)
    return size, n * size


def _pad(x, length, value=0):
    if x is None or x.shape[1] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rule: MaskRule,
    *,
    alibi_slopes: jax.Array | None = None,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_k: int = DEFAULT_BLOCK,
) -> jax.Array:
    """Flash attention in pure JAX: O(T + S) memory, forward and backward (see the module doc).

    Args:
        q: ``[B, T, N, H]``.
        k, v: ``[B, S, K, H]`` with N a multiple of K.
        rule: the mask, as positions ``[B, T]``, ``[B, S]`` and optional segment ids.
        alibi_slopes: ``[N]``: add the ALiBi bias ``-slope * (q_pos - k_pos)`` (a constant: no
            gradient flows to it).
        scale: logit scale, default ``H ** -0.5`` (a Python float).
        block_q, block_k: the most queries and keys per block; lengths that are not a multiple
            are padded inside (padding keys get position -1 and are never seen).

    Returns:
        ``[B, T, N, H]`` in the dtype of ``q``; 0 for a query that sees no key.
    """
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    bq, tp = _blocking(t, block_q)
    bk, sp = _blocking(s, block_k)
    st = _Static(rule.causal, rule.window, h**-0.5 if scale is None else float(scale), bq, bk)
    qg = _pad(q.reshape(b, t, kh, n // kh, h), tp)
    args = (
        _pad(rule.q_pos, tp, -1),
        _pad(rule.k_pos, sp, -1),
        _pad(rule.q_segment, tp),
        _pad(rule.k_segment, sp),
        None if alibi_slopes is None else jnp.asarray(alibi_slopes, _F32),
    )
    out = _flash(st, qg, _pad(k, sp), _pad(v, sp), *args)
    return out[:, :t].reshape(b, t, n, h)
