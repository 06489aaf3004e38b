"""The pure train and eval steps, and the one factory that jits them.

``train_step`` closes over nothing and names no model kind: the objective (a loss function), the
model config, optimizer and accumulation count arrive as static arguments, the RNG as
``fold_in(key, step)``.

A step whose loss or gradient norm is not finite changes neither params nor optimizer state (the
state is donated, so the step's output is the only copy of the last good state); it reports
``finite`` and ``skipped`` in its metrics, and the loop decides whether to stop or carry on
(``TrainConfig.on_nan``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything training works with: ``params`` (what is trained) and its ``opt_state``
    change; ``frozen`` (None, or params the objective reads but does not train, such as a DPO
    reference or LoRA's base weights) does not. A pytree."""

    step: jax.Array
    params: Any
    opt_state: Any
    frozen: Any = None


def train_step(
    state: TrainState, batch: dict, key, *, objective: Callable, cfg, tx, grad_accum: int
):
    """One optimizer step over ``grad_accum`` micro-batches.

    Args:
        state: the current :class:`TrainState`.
        batch: dict of ``[B, ...]`` arrays, as the objective's examples build them.
        key: the run's base PRNG key; this step uses ``fold_in(key, state.step)``.
        objective: ``loss(params, batch, rng, *, cfg) -> (loss_sum, count, metrics)`` (static);
            with ``state.frozen`` set, called with the keyword ``frozen=state.frozen`` too.
            It gets a dropout key when the model has dropout or ``objective.uses_rng`` is set
            (LoRA's adapter dropout).
        cfg: model config (static).
        tx: the Optax optimizer (static).
        grad_accum: number of micro-batches A; B must divide by A (static).

    Returns:
        ``(new_state, metrics)``: loss and each objective metric per counted token (every token
        weighted equally across micro-batches), grad_norm, tokens (the count), and ``finite`` /
        ``skipped`` (1.0 or 0.0). If the loss or grad_norm is not finite the update is skipped:
        params and opt_state come back bitwise unchanged; the step counter still advances.
    """
    uses_rng = cfg.dropout > 0 or getattr(objective, "uses_rng", False)
    rng = jax.random.fold_in(key, state.step) if uses_rng else None
    if state.frozen is not None:
        objective = functools.partial(objective, frozen=state.frozen)
    grads, loss_sum, count, sums = summed_grads(
        state.params, batch, rng, objective=objective, cfg=cfg, grad_accum=grad_accum
    )
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss, grad_norm = loss_sum / denom, optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, opt_state = keep_if(finite, (params, opt_state), (state.params, state.opt_state))
    metrics = {k: v / denom for k, v in sums.items()}
    metrics |= {"loss": loss, "grad_norm": grad_norm, "tokens": count}
    metrics |= {"finite": finite.astype(jnp.float32), "skipped": (~finite).astype(jnp.float32)}
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state.replace(frozen=state.frozen), metrics


def summed_grads(params, batch: dict, rng, *, objective: Callable, cfg, grad_accum: int):
    """Gradients of the summed loss over ``grad_accum`` micro-batches of ``batch``.

    With one micro-batch this is a single ``value_and_grad``; with more, a ``lax.scan`` adds
    each micro-batch's sums into a zero-initialised carry. Micro-batch ``i`` uses dropout key
    ``fold_in(rng, i)`` either way.

    Returns:
        ``(grads, loss_sum, count, metric_sums)``, all sums over every micro-batch.
    """
    grad_fn = jax.value_and_grad(_loss, has_aux=True)

    def one(mb, i):
        r = None if rng is None else jax.random.fold_in(rng, i)
        (loss, (count, sums)), grads = grad_fn(params, mb, r, objective, cfg)
        return grads, loss, count, sums

    if grad_accum == 1:
        return one(batch, 0)
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

    def accumulate(acc, inputs):
        return jax.tree.map(jnp.add, acc, one(*inputs)), None

    shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro), 0)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    acc, _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(grad_accum)))
    return acc


def keep_if(ok: jax.Array, new, old):
    """``new`` where the scalar ``ok`` is true, else ``old`` (bitwise), leaf by leaf."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


@jax.jit
def all_finite(tree) -> jax.Array:
    """True iff every element of every leaf of ``tree`` is finite (integer leaves always are)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _loss(params, mb, rng, objective, cfg):
    """The summed loss of one micro-batch, with ``(count, metric sums)`` as aux."""
    loss_sum, count, sums = objective(params, mb, rng, cfg=cfg)
    return loss_sum, (count, sums)


def eval_step(params, batch: dict, *, objective: Callable, cfg, frozen=None) -> dict:
    """Summed loss, count and metric sums on one batch (no dropout)."""
    if frozen is not None:
        objective = functools.partial(objective, frozen=frozen)
    loss_sum, count, sums = objective(params, batch, None, cfg=cfg)
    return {"loss_sum": loss_sum, "count": count, **sums}


def make_steps(
    objective: Callable, cfg, tx, grad_accum: int, state_shardings=None, batch_sharding=None
):
    """Jits ``train_step`` (donating the state) and ``eval_step`` once, with shardings.

    Returns:
        ``(train_fn(state, batch, key), eval_fn(params, batch, frozen=None))``.
    """
    train = jax.jit(
        functools.partial(train_step, objective=objective, cfg=cfg, tx=tx, grad_accum=grad_accum),
        donate_argnums=(0,),
        in_shardings=None if state_shardings is None else (state_shardings, batch_sharding, None),
        out_shardings=None if state_shardings is None else (state_shardings, None),
    )
    evaluate = jax.jit(functools.partial(eval_step, objective=objective, cfg=cfg))
    return train, evaluate
