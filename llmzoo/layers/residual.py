"""Residual sub-layers: dropout and the pre-norm (T5, GPT-2) or post-norm (BART, BERT) wrapper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout of ``x [...]``; the identity when ``rng`` is None or ``rate`` is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def residual(
    x: jax.Array,
    fn: Callable[[jax.Array], tuple[jax.Array, Any]],
    norm: Callable[[jax.Array], jax.Array],
    *,
    post_norm: bool = False,
    rate: float = 0.0,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    """One residual sub-layer: ``x + f(norm(x))`` (pre-norm) or ``norm(x + f(x))`` (post-norm).

    Args:
        x: ``[B, T, D]``.
        fn: the sub-layer, ``[B, T, D] -> ([B, T, D], aux)`` (aux: e.g. new keys and values).
        norm: the normalisation, ``[B, T, D] -> [B, T, D]``.
        post_norm: normalise after the residual sum (Vaswani et al., 2017; BART) instead of
            before the sub-layer.
        rate: dropout rate on the sub-layer's output.
        rng: PRNG key enabling dropout.

    Returns:
        ``(x [B, T, D], aux)``.
    """
    if post_norm:
        y, aux = fn(x)
        return norm(x + dropout(y, rate, rng)), aux
    y, aux = fn(norm(x))
    return x + dropout(y, rate, rng), aux
