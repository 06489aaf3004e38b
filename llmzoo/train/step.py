"""The pure train and eval steps, and the one factory that jits them.

``train_step`` closes over nothing: the model config, optimizer and accumulation count arrive as
static arguments, the RNG as ``fold_in(key, step)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from llmzoo.config import ModelConfig
from llmzoo.models import decoder
from llmzoo.objectives.causal_lm import cross_entropy


@struct.dataclass
class TrainState:
    """Everything that changes during training. A pytree."""

    step: jax.Array
    params: Any
    opt_state: Any


def loss_sums(params, batch: dict, rng, *, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """Summed next-token loss and token count of a packed batch (``[B, T]`` arrays)."""
    logits = decoder.apply(
        params,
        batch["tokens"],
        cfg=cfg,
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        rng=rng,
    )
    return cross_entropy(logits, batch["targets"], batch["loss_mask"])


def train_step(state: TrainState, batch: dict, key, *, cfg: ModelConfig, tx, grad_accum: int):
    """One optimizer step over ``grad_accum`` micro-batches.

    Args:
        state: the current :class:`TrainState`.
        batch: dict of ``[B, T]`` arrays (tokens, targets, positions, segment_ids, loss_mask).
        key: the run's base PRNG key; this step uses ``fold_in(key, state.step)``.
        cfg: model config (static).
        tx: the Optax optimizer (static).
        grad_accum: number of micro-batches A; B must divide by A (static).

    Returns:
        ``(new_state, metrics)`` with loss (token-weighted mean), grad_norm and tokens.
    """
    rng = jax.random.fold_in(key, state.step) if cfg.dropout > 0 else None
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

    def accumulate(carry, inputs):
        mb, i = inputs
        r = None if rng is None else jax.random.fold_in(rng, i)
        (loss, count), grads = _grad(state.params, mb, r, cfg)
        g_acc, l_acc, n_acc = carry
        return (jax.tree.map(jnp.add, g_acc, grads), l_acc + loss, n_acc + count), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, loss_sum, count), _ = jax.lax.scan(accumulate, init, (micro, jnp.arange(grad_accum)))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "tokens": count}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _grad(params, mb, rng, cfg):
    """Gradient of the summed loss of one micro-batch, with its (loss_sum, count)."""
    (loss_sum, count), grads = jax.value_and_grad(
        lambda p: loss_sums(p, mb, rng, cfg=cfg), has_aux=True
    )(params)
    return (loss_sum, count), grads


def eval_step(params, batch: dict, *, cfg: ModelConfig) -> dict:
    """Summed loss and token count on one batch (no dropout)."""
    loss_sum, count = loss_sums(params, batch, None, cfg=cfg)
    return {"loss_sum": loss_sum, "count": count}


def make_steps(cfg: ModelConfig, tx, grad_accum: int, state_shardings=None, batch_sharding=None):
    """Jits ``train_step`` (donating the state) and ``eval_step`` once, with shardings.

    Returns:
        ``(train_fn(state, batch, key), eval_fn(params, batch))``.
    """
    train = jax.jit(
        functools.partial(train_step, cfg=cfg, tx=tx, grad_accum=grad_accum),
        donate_argnums=(0,),
        in_shardings=None if state_shardings is None else (state_shardings, batch_sharding, None),
        out_shardings=None if state_shardings is None else (state_shardings, None),
    )
    evaluate = jax.jit(functools.partial(eval_step, cfg=cfg))
    return train, evaluate
