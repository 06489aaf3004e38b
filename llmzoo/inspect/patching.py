"""Activation patching (causal tracing; Meng et al., 2022, "Locating and editing factual
associations in GPT"): run a corrupted prompt, put back one activation from the clean run, and
measure how much of the clean behaviour returns.

The behaviour is the logit difference ``logit[answer] - logit[wrong]`` at the last position,
averaged over the batch; a patch's score is the fraction of the clean difference it restores:
``(patched - corrupt) / (clean - corrupt)``, 0 for no effect and 1 for the clean run's value.
Every patch of a map is one row of a boolean mask, and all rows run in one jitted call
(``jax.lax.map`` over chunks of ``chunk`` masks, each chunk vectorised), not a Python loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmzoo.errors import DataError
from llmzoo.models import registry


def _tokens(x) -> jax.Array:
    x = jnp.asarray(x, jnp.int32)
    return x[None] if x.ndim == 1 else x


def last_logit_diff(logits: jax.Array, answer, wrong) -> jax.Array:
    """``logits[:, -1, answer] - logits[:, -1, wrong]`` averaged over the batch.

    Args:
        logits: ``[B, T, V]``.
        answer, wrong: token ids, scalars or ``[B]``.

    Returns:
        a float32 scalar.
    """
    last = logits[:, -1].astype(jnp.float32)  # [B, V]
    rows = jnp.arange(last.shape[0])
    a = jnp.broadcast_to(jnp.asarray(answer), rows.shape)
    w = jnp.broadcast_to(jnp.asarray(wrong), rows.shape)
    return jnp.mean(last[rows, a] - last[rows, w])


@functools.partial(jax.jit, static_argnames=("cfg", "name", "chunk"))
def _patched(params, clean, corrupt, answer, wrong, wheres, cfg, name, chunk):
    apply = registry.get(cfg.kind).apply
    clean_out = apply(params, {"tokens": clean}, cfg=cfg, capture=(name,))
    values = clean_out["captured"][name]
    corrupt_logits = apply(params, {"tokens": corrupt}, cfg=cfg)["logits"]

    def one(where):
        out = apply(params, {"tokens": corrupt}, cfg=cfg, patch={name: (values, where)})
        return last_logit_diff(out["logits"], answer, wrong)

    return {
        "clean": last_logit_diff(clean_out["logits"], answer, wrong),
        "corrupt": last_logit_diff(corrupt_logits, answer, wrong),
        "patched": jax.lax.map(one, wheres, batch_size=chunk),
    }


def patched_logit_diffs(
    params, clean, corrupt, answer, wrong, wheres, *, cfg, name="residual", chunk=64
) -> dict:
    """Logit differences of the corrupted run with clean activations patched in by each mask.

    Args:
        params: model params.
        clean: ``[B, T]`` (or ``[T]``) token ids of the clean prompt.
        corrupt: the corrupted prompt, shaped as ``clean``.
        answer: the clean answer's token id (scalar or ``[B]``).
        wrong: the token id it is compared with (e.g. the corrupted prompt's answer).
        wheres: ``[M, ...]`` bool masks, each broadcastable to the capture ``name`` without its
            feature dims (``residual``: ``[L + 1, B, T]``; ``head_out``: ``[L, B, T, N]``).
        cfg: model config; its kind must capture and patch ``name``.
        name: the activation to patch (see :mod:`llmzoo.models.capture`).
        chunk: masks vectorised at once (bounds memory: ``chunk`` forward passes side by side).

    Returns:
        float32 ``'clean'`` and ``'corrupt'`` scalars and ``'patched'`` ``[M]``.

    Raises:
        ConfigError: a kind that cannot patch ``name``.
    """
    clean, corrupt = _tokens(clean), _tokens(corrupt)
    if clean.shape != corrupt.shape:
        raise DataError(
            f"clean {clean.shape} and corrupted {corrupt.shape} prompts differ in length; "
            "patching needs prompts of as many tokens"
        )
    wheres = jnp.asarray(wheres, bool)
    return _patched(params, clean, corrupt, answer, wrong, wheres, cfg, name, chunk)


def restored_fraction(diffs: dict) -> jax.Array:
    """``(patched - corrupt) / (clean - corrupt)`` from :func:`patched_logit_diffs`.

    Raises:
        DataError: the clean and corrupted runs give the same logit difference.
    """
    gap = float(diffs["clean"] - diffs["corrupt"])
    if abs(gap) < 1e-6:
        raise DataError(
            "the clean and corrupted prompts give the same logit difference "
            f"({float(diffs['clean']):.4g}); choose a corruption that changes the answer"
        )
    return (diffs["patched"] - diffs["corrupt"]) / gap


def _one_hot_masks(shape: tuple[int, ...]) -> jax.Array:
    """``[prod(shape), *shape]``: mask m is True at the m-th cell only (row-major)."""
    n = 1
    for s in shape:
        n *= s
    return jnp.eye(n, dtype=bool).reshape((n, *shape))


def patch_residual(params, clean, corrupt, answer, wrong, *, cfg, chunk=64) -> jax.Array:
    """The residual-stream patching map: each (row, position) patched alone.

    Args:
        params, clean, corrupt, answer, wrong, cfg, chunk: as for :func:`patched_logit_diffs`.

    Returns:
        float32 ``[L + 1, T]``: the restored fraction of the clean logit difference when the
        residual stream at row l (0: the embeddings, l + 1: after block l) and position t, in
        every batch row, is taken from the clean run.

    Raises:
        DataError: prompts of different lengths, or a corruption that leaves the difference.
    """
    t = _tokens(clean).shape[1]
    masks = _one_hot_masks((cfg.n_layers + 1, t))[:, :, None, :]  # [M, L + 1, 1, T]
    diffs = patched_logit_diffs(params, clean, corrupt, answer, wrong, masks, cfg=cfg, chunk=chunk)
    return restored_fraction(diffs).reshape(cfg.n_layers + 1, t)


def patch_heads(params, clean, corrupt, answer, wrong, *, cfg, chunk=64) -> jax.Array:
    """The per-head patching map: each head's output (before the output projection) at every
    position taken from the clean run, one head at a time.

    Args:
        params, clean, corrupt, answer, wrong, cfg, chunk: as for :func:`patched_logit_diffs`.

    Returns:
        float32 ``[L, N]`` restored fractions.

    Raises:
        ConfigError: a kind without attention heads.
        DataError: as for :func:`patch_residual`.
    """
    masks = _one_hot_masks((cfg.n_layers, cfg.n_heads))[:, :, None, None, :]  # [M, L, 1, 1, N]
    diffs = patched_logit_diffs(
        params, clean, corrupt, answer, wrong, masks, cfg=cfg, name="head_out", chunk=chunk
    )
    return restored_fraction(diffs).reshape(cfg.n_layers, cfg.n_heads)
