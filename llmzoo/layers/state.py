"""What the recurrent kinds (``rnn``, ``mamba``, ``rwkv``) share about their state: where it
restarts within a batch, and how generation picks its rows.

Dimension letters: B batch, T time, L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reset_mask(
    shape: tuple[int, int], positions: jax.Array | None, segment_ids: jax.Array | None
) -> jax.Array:
    """``[B, T]`` bool: where the state restarts from zero before the step.

    ``positions`` and ``segment_ids`` are optional ``[B, T]`` ints. A new document starts where
    its position is 0 (or negative: left padding) or where the segment id changes from the
    previous token (packed rows, :mod:`llmzoo.data.pipeline`).
    """
    reset = jnp.zeros(shape, bool) if positions is None else positions <= 0
    if segment_ids is not None:
        change = segment_ids[:, 1:] != segment_ids[:, :-1]
        reset = reset | jnp.pad(change, ((0, 0), (1, 0)))
    return reset


def select_rows(cache, index: jax.Array):
    """Gathers rows ``index [B']`` of a cache of ``[L, B, ...]`` arrays (beam search reorders
    and expands rows with it)."""
    return jax.tree.map(lambda s: s[:, index], cache)
