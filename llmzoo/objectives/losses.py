"""Loss functions handed to the one train step.

Every loss has the signature ``loss(params, batch, rng, *, cfg) -> (loss_sum, count, metrics)``:
``cfg`` is the model config (its ``kind`` picks the model module from the registry), sums rather
than means so that gradient accumulation and multi-batch evaluation weight every token (or
example) equally, and ``metrics`` is a dict of further sums, each divided by ``count`` when
reported (e.g. ``accuracy``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.errors import DataError
from llmzoo.models import registry


def cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Summed token cross-entropy and the number of counted tokens.

    Args:
        logits: ``[..., V]`` (any float dtype; computed in float32).
        targets: ``[...]`` int target ids.
        mask: ``[...]`` weights (1 = count this token); default all ones.

    Returns:
        ``(loss_sum, count)``: scalars; the mean loss is ``loss_sum / count``.
    """
    nll = token_nll(logits, targets)
    if mask is None:
        mask = jnp.ones_like(nll)
    mask = mask.astype(jnp.float32)
    return (nll * mask).sum(), mask.sum()


@jax.custom_vjp
def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood ``logsumexp(logits) - logits[target]``, float32.

    The gradient is written out as ``softmax(logits) - one_hot(target)``: one fused pass over
    ``[..., V]``, where autodiff would scatter the target term into a zero ``[..., V]`` array and
    add it to the softmax in further passes (the largest array of a language model's step).

    Args:
        logits: ``[..., V]`` (any float dtype; the log-softmax is taken in float32).
        targets: ``[...]`` int target ids.

    Returns:
        ``[...]`` float32; the gradient comes back in the dtype of ``logits``.
    """
    return _nll_forward(logits, targets)[0]


def _nll_forward(logits, targets):
    x = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(x, axis=-1)
    nll = logz - jnp.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    return nll, (logits, targets, logz)


def _nll_backward(residuals, g):
    logits, targets, logz = residuals
    one_hot = jnp.arange(logits.shape[-1]) == targets[..., None]
    probs = jnp.exp(logits.astype(jnp.float32) - logz[..., None])
    return (g[..., None] * (probs - one_hot)).astype(logits.dtype), None


token_nll.defvjp(_nll_forward, _nll_backward)


def _accuracy_sum(logits, targets, mask) -> jax.Array:
    """Counted tokens whose target has the one largest logit (a tie counts as wrong).

    A single comparison-and-count pass: cheaper on CPU than ``argmax``'s (value, index) reduce.
    """
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    correct = (jnp.sum(logits >= target_logit, axis=-1) == 1).astype(jnp.float32)
    return (correct * mask.astype(jnp.float32)).sum()


def token_loss(params, batch: dict, rng, *, cfg) -> tuple[jax.Array, jax.Array, dict]:
    """Cross-entropy of the model's ``logits`` against ``batch['targets']`` where
    ``batch['loss_mask']`` is 1.

    The loss of causal LM (targets are the next tokens), masked LM (targets at the selected
    positions), span corruption and denoising (decoder targets): the objectives differ in the
    examples they build (:mod:`llmzoo.objectives.examples`), not in the loss.

    Args:
        params: the model's params.
        batch: the model kind's inputs plus ``targets [B, T]`` int and ``loss_mask [B, T]``.
        rng: PRNG key for dropout, or None.
        cfg: the model config.

    Returns:
        ``(loss_sum, count, {'accuracy': correct_sum})``.
    """
    out = registry.get(cfg.kind).apply(params, batch, cfg=cfg, rng=rng)
    logits, targets, mask = out["logits"], batch["targets"], batch["loss_mask"]
    loss_sum, count = cross_entropy(logits, targets, mask)
    return loss_sum, count, {"accuracy": _accuracy_sum(logits, targets, mask)}


def sequence_classification_loss(params, batch: dict, rng, *, cfg):
    """Cross-entropy of ``logits [B, C]`` against ``batch['labels'] [B]``; rows with
    ``batch['example_mask']`` 0 (batch padding) are not counted.

    Returns:
        ``(loss_sum, count, {'accuracy': correct_sum})``.
    """
    out = registry.get(cfg.kind).apply(params, batch, cfg=cfg, rng=rng)
    labels = batch["labels"]
    mask = batch.get("example_mask", jnp.ones(labels.shape, jnp.float32))
    loss_sum, count = cross_entropy(out["logits"], labels, mask)
    return loss_sum, count, {"accuracy": _accuracy_sum(out["logits"], labels, mask)}


def token_classification_loss(params, batch: dict, rng, *, cfg):
    """Cross-entropy of ``logits [B, T, C]`` against ``batch['labels'] [B, T]`` where
    ``batch['loss_mask']`` is 1 (e.g. the first piece of each word in NER).

    Returns:
        ``(loss_sum, count, {'accuracy': correct_sum})``.
    """
    out = registry.get(cfg.kind).apply(params, batch, cfg=cfg, rng=rng)
    labels, mask = batch["labels"], batch["loss_mask"]
    loss_sum, count = cross_entropy(out["logits"], labels, mask)
    return loss_sum, count, {"accuracy": _accuracy_sum(out["logits"], labels, mask)}


def check_labels(labels, num_labels: int, mask=None) -> None:
    """Raises a one-line DataError when a (counted) label is outside ``0 .. num_labels - 1``.

    Runs on host arrays before they reach a jitted step, where an out-of-range label would
    silently gather a wrong logit.
    """
    labels = np.asarray(labels)
    counted = labels if mask is None else labels[np.asarray(mask) > 0]
    bad = counted[(counted < 0) | (counted >= num_labels)]
    if bad.size:
        raise DataError(
            f"label {int(bad[0])} is outside the label set 0..{num_labels - 1} "
            f"(model.num_labels={num_labels}); fix the data or raise model.num_labels"
        )
