"""Causal language modelling: next-token cross-entropy with a loss mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Summed token cross-entropy and the number of counted tokens.

    Args:
        logits: ``[B, T, V]`` (any float dtype; computed in float32).
        targets: ``[B, T]`` int target ids.
        mask: ``[B, T]`` weights (1 = count this token); default all ones.

    Returns:
        ``(loss_sum, count)``: scalars; the mean loss is ``loss_sum / count``. Returning sums lets
        gradient accumulation and multi-batch evaluation weight every token equally.
    """
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = logz - target_logit
    if mask is None:
        mask = jnp.ones_like(nll)
    mask = mask.astype(jnp.float32)
    return (nll * mask).sum(), mask.sum()
