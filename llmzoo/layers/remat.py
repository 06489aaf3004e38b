"""The loop over a model's layers: rematerialisation by policy (``model.remat``) and a scanned
or unrolled loop (``model.scan_layers``).

A policy names what the forward pass of each block keeps for the backward pass:

- ``none``: whatever each layer function keeps (the norms, activations and weight matmuls keep
  only their inputs, the MLP its up and gate projections and the attention softmax its
  probabilities; see :mod:`llmzoo.layers.norms`, :mod:`llmzoo.layers.mlp`);
- ``full``: only the block's input; the whole block is recomputed in the backward pass
  (Chen et al. 2016, "Training deep nets with sublinear memory cost");
- ``dots_saveable``: the outputs of the matmuls; only the elementwise ops between them (norms,
  activations, softmax) are recomputed;
- ``dots_with_no_batch_dims_saveable``: the outputs of the matmuls with a weight (projections,
  MLP), not those of attention's batched matmuls: attention's scores, softmax and weighted sum
  are recomputed too, so no ``[B, N, T, S]`` array is kept per layer (MaxText's ``minimal``).

All of them compute the same values; only memory and time differ.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from llmzoo.config import REMAT_POLICIES

_SAVEABLE = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(fn: Callable, policy: str, *, prevent_cse: bool = False) -> Callable:
    """``fn`` under ``jax.checkpoint`` with the named policy (``none``: ``fn`` unchanged).

    ``prevent_cse=False`` suits the body of a ``lax.scan``, which already keeps XLA from merging
    the recomputation with the forward pass; an unrolled loop needs ``True``.

    Raises:
        ValueError: ``policy`` is not one of :data:`llmzoo.config.REMAT_POLICIES`.
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is unknown; use {', '.join(REMAT_POLICIES)}")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=_SAVEABLE[policy], prevent_cse=prevent_cse)


def layer_loop(body: Callable, carry, xs, *, policy: str, scan: bool = True):
    """Applies ``body`` once per layer, as ``lax.scan(remat(body, policy), carry, xs)`` does.

    Args:
        body: ``(carry, xs_l) -> (carry, ys_l)`` for layer l.
        carry: what flows from layer to layer (the residual stream ``[B, T, D]``).
        xs: a pytree of arrays with a leading layer axis L (the stacked layer params,
            ``arange(L)`` ...); None leaves are allowed.
        policy: the remat policy (``model.remat``).
        scan: ``True``: one ``lax.scan``, whose block compiles once whatever L is. ``False``:
            a Python loop, compiled layer by layer: compile time grows with L, but the step
            skips the scan's stacked per-layer buffers of saved activations and gradients
            (``model.scan_layers=false``, as MaxText's ``scan_layers``).

    Returns:
        ``(carry, ys)`` with ``ys`` stacked over a leading layer axis L.
    """
    body = remat(body, policy, prevent_cse=not scan)
    if scan:
        return jax.lax.scan(body, carry, xs)
    ys = []
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
        carry, y = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
        ys.append(y)
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)
