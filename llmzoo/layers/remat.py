"""Rematerialisation (gradient checkpointing) of a scanned block, by policy (``model.remat``).

A policy names what the forward pass of each block keeps for the backward pass:

- ``none``: every intermediate (fastest, most memory);
- ``full``: only the block's input; the whole block is recomputed in the backward pass
  (Chen et al. 2016, "Training deep nets with sublinear memory cost");
- ``dots_saveable``: the outputs of the matmuls; only the elementwise ops between them (norms,
  activations, softmax) are recomputed.

All three compute the same values; only memory and time differ.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from llmzoo.config import REMAT_POLICIES

_SAVEABLE = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def remat(fn: Callable, policy: str) -> Callable:
    """``fn`` under ``jax.checkpoint`` with the named policy (``none``: ``fn`` unchanged).

    Meant for the body of a ``lax.scan`` over layers, which already keeps XLA from merging the
    recomputation with the forward pass (hence ``prevent_cse=False``).

    Raises:
        ValueError: ``policy`` is not one of :data:`llmzoo.config.REMAT_POLICIES`.
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is unknown; use {', '.join(REMAT_POLICIES)}")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=_SAVEABLE[policy], prevent_cse=False)
