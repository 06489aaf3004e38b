"""Optax AdamW with linear warmup + cosine decay, global-norm clipping, masked weight decay;
fixed sparsity masks (:func:`keep_zeros`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from llmzoo.config import OptimConfig
from llmzoo.params import is_spec


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``cfg.lr`` over ``warmup_steps``, then cosine decay to
    ``lr * min_lr_ratio`` at ``total_steps``."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


def decay_mask(specs) -> dict:
    """True for params that get weight decay: projection matrices and embedding tables, i.e.
    specs with an ``embed`` axis and at least one other axis besides the stacked ``layers``.

    Norm scales ``[D]``, MLP biases ``[F]`` and attention biases ``[N, H]`` are excluded.
    """

    def decays(s):
        axes = [a for a in (s.logical_axes or (None,) * len(s.shape)) if a != "layers"]
        return "embed" in axes and len(axes) >= 2

    return jax.tree.map(decays, specs, is_leaf=is_spec)


def make_optimizer(
    cfg: OptimConfig, total_steps: int, specs=None, *, mask=None
) -> optax.GradientTransformation:
    """Builds the optimizer for params declared by ``specs`` (weight decay by
    :func:`decay_mask`), or for any tree of trainable params with ``mask``, a matching tree of
    bools (True: decay)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            lr_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask(specs) if mask is None else mask,
        ),
    )


class KeepZerosState(NamedTuple):
    """The fixed masks of :func:`keep_zeros`: per param a bool array (True: trained), or an
    ``optax.MaskedNode`` for a param it leaves alone."""

    keep: Any


def keep_zeros(masks_of: Callable[[Any], Any]) -> optax.GradientTransformation:
    """Fixed sparsity masks: chained last, it zeroes the updates of the weights its masks drop,
    so pruned weights stay exactly zero (weight decay included).

    Args:
        masks_of: params -> a matching tree of bool arrays (True: kept) or None (not masked),
            e.g. :func:`llmzoo.compress.prune.masks`; called once, by ``init``. The masks live in
            the optimizer state, so a checkpoint keeps them and a resumed run restores them.
    """

    def init(params):
        keep = jax.tree.map(
            lambda k: optax.MaskedNode() if k is None else k,
            masks_of(params),
            is_leaf=lambda x: x is None,
        )
        return KeepZerosState(keep)

    def update(updates, state, params=None):
        del params

        def apply(u, k):
            return u if isinstance(k, optax.MaskedNode) else jnp.where(k, u, jnp.zeros_like(u))

        return jax.tree.map(apply, updates, state.keep), state

    return optax.GradientTransformation(init, update)


def init_state(tx: optax.GradientTransformation, params, mesh: jax.sharding.Mesh):
    """``tx.init(params)`` as one compiled program, laid out for training.

    A state leaf whose tree path ends with a param's path and has its shape (Adam's moments,
    :func:`keep_zeros`' masks) takes that param's sharding; every other leaf (step counts) is
    replicated over ``mesh``. Run eagerly, ``init`` compiles a zeros program per leaf shape.

    Args:
        tx: the optimizer.
        params: the trained params, each a ``jax.Array`` in its sharding.
        mesh: the training mesh.

    Returns:
        The optimizer state, the same values as ``tx.init(params)``.
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_path = dict(jax.tree_util.tree_leaves_with_path(params))

    def sharding_of(path, leaf):
        for start in range(len(path)):
            x = by_path.get(path[start:])
            if x is not None and x.shape == leaf.shape:
                return x.sharding
        return replicated

    abstract = jax.eval_shape(tx.init, params)
    shardings = jax.tree_util.tree_map_with_path(sharding_of, abstract)
    return jax.jit(tx.init, out_shardings=shardings)(params)
