"""The training machinery shared by Word2Vec and GloVe: fixed-shape batches and a jitted epoch.

An epoch is ``S`` steps of ``B`` examples. Its batches are stacked into arrays of shape
``[S, B, ...]`` and consumed by one :func:`jax.lax.scan`, so each epoch is one compiled call
(cheap on CPU, where per-step dispatch would dominate). Every epoch of a run has the same ``S``,
so the epoch function compiles once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax

LossFn = Callable[[dict, dict], jax.Array]


def shuffled_batches(
    arrays: dict[str, np.ndarray], batch_size: int, steps: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Shuffles equal-length example arrays and cuts them into ``steps`` batches.

    The shuffled examples are repeated (wrapped around) or cut so that there are exactly
    ``steps * batch_size`` of them: the last batch of an epoch is filled from its start.

    Args:
        arrays: name -> ``[N, ...]`` array, one row per example (``N >= 1``).
        batch_size: ``B``.
        steps: ``S``.
        rng: the generator that draws the permutation.

    Returns:
        name -> ``[S, B, ...]`` array.
    """
    n = len(next(iter(arrays.values())))
    order = rng.permutation(n)
    order = np.resize(order, steps * batch_size)  # repeats the permutation when it is too short
    return {k: v[order].reshape(steps, batch_size, *v.shape[1:]) for k, v in arrays.items()}


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """``ceil(n_examples / batch_size)``, at least 1."""
    return max(1, -(-n_examples // batch_size))


def make_epoch_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """Returns ``epoch(params, opt_state, batches) -> (params, opt_state, losses [S])``, jitted.

    ``batches`` is a dict of ``[S, B, ...]`` arrays; step ``s`` takes the gradient of
    ``loss_fn(params, batch_s)`` and applies one optimizer update.
    """

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def epoch(params, opt_state, batches):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, losses

    return epoch
