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
    """True for params that get weight decay: matrices, i.e. specs with two or more axes other
    than the stacked ``layers`` axis. Norm scales and biases are excluded."""
    return jax.tree.map(
        lambda s: sum(a != "layers" for a in (s.logical_axes or (None,) * len(s.shape))) >= 2,
        specs,
        is_leaf=is_spec,
    )


def make_optimizer(cfg: OptimConfig, total_steps: int, specs) -> optax.GradientTransformation:
    """Builds the optimizer for params declared by ``specs``."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            lr_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask(specs),
        ),
    )
