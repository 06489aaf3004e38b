"""Cross-attention (encoder-decoder attention): decoder queries over an encoder's keys and values.

The params are those of :func:`llmzoo.layers.attention.attention_specs` with K = N. The keys and
values depend only on the encoder output, so decoding computes them once (:func:`cross_kv`) and
reuses them at every step.
"""

from __future__ import annotations

import jax

from llmzoo.layers import linear
from llmzoo.layers.attention import out_projection
from llmzoo.layers.attention_impl import AttentionPlan, attend


def project_heads(params: dict, x: jax.Array, weight: str, bias: str) -> jax.Array:
    """One projection to heads, ``x [B, T, D]`` -> ``[B, T, N, H]``, with its bias if present."""
    y = linear.einsum("btd,dnh->btnh", x, params[weight])
    return y + params[bias].astype(x.dtype) if bias in params else y


def cross_kv(params: dict, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values of the encoder output ``memory [B, S, D]``: ``[B, S, N, H]`` each."""
    return project_heads(params, memory, "wk", "bk"), project_heads(params, memory, "wv", "bv")


def cross_attention(
    params: dict,
    x: jax.Array,
    kv: tuple[jax.Array, jax.Array],
    plan: AttentionPlan,
    *,
    scale: float | None = None,
) -> jax.Array:
    """Attends decoder states ``x [B, T, D]`` over ``kv`` from :func:`cross_kv`.

    Args:
        params: attention params (``wq``, ``wo`` and their biases are used here).
        x: ``[B, T, D]`` decoder states.
        kv: ``([B, S, N, H], [B, S, N, H])``.
        plan: from :func:`llmzoo.layers.attention_impl.plan_attention` (the encoder padding mask).
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``[B, T, D]``.
    """
    q = project_heads(params, x, "wq", "bq")
    return out_projection(params, attend(q, *kv, plan, scale=scale))
