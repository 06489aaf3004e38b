"""Optax AdamW with linear warmup + cosine decay, global-norm clipping, masked weight decay."""

from __future__ import annotations

import jax
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
