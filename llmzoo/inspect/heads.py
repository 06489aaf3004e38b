"""Attention maps and what each head does: entropy, previous-token and induction scores.

The scores follow Olsson et al. (2022), "In-context learning and induction heads": a
previous-token head puts its weight on the key just before the query; an induction head, on a
repeated random sequence, attends from a token of the second copy to the token that followed the
same token in the first copy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmzoo.inspect.induction import repeated_tokens
from llmzoo.models import registry


@functools.partial(jax.jit, static_argnames=("cfg",))
def _maps(params: dict, batch: dict, cfg) -> jax.Array:
    out = registry.get(cfg.kind).apply(params, batch, cfg=cfg, capture=("attn_probs",))
    return out["captured"]["attn_probs"]


def attention_maps(params: dict, batch: dict, *, cfg) -> jax.Array:
    """The attention probabilities of every layer and head.

    Args:
        params: model params.
        batch: ``tokens [B, T]`` (optional ``positions``, ``segment_ids``) for the kind's apply.
        cfg: the model config; its kind must capture ``attn_probs``.

    Returns:
        float32 ``[L, B, N, T, S]``; each query row sums to 1 over the keys it may see.

    Raises:
        ConfigError: a kind without attention (``rnn``, ``mamba``, ``rwkv``).
    """
    return _maps(params, batch, cfg)


def _entropy(probs: jax.Array) -> jax.Array:
    """``-sum p log p`` over the last axis, in nats (0 log 0 = 0)."""
    safe = jnp.where(probs > 0, probs, 1.0)
    return -jnp.sum(probs * jnp.log(safe), axis=-1)


def head_summaries(probs: jax.Array, *, segment_ids: jax.Array | None = None) -> dict:
    """Per-head averages of self-attention maps.

    Args:
        probs: ``[L, B, N, T, T]`` (:func:`attention_maps`; keys are the queries' own tokens).
        segment_ids: optional ``[B, T]``; 0 marks padding, whose query rows are left out, and a
            query whose previous token is in another segment is left out of ``prev_token``.

    Returns:
        float32 ``[L, N]`` arrays: ``'entropy'``, each row's entropy in nats averaged over the real
        query rows (those that see at least one key; a causal head spread evenly over its
        ``t + 1`` keys has ``log(t + 1)`` at row t); ``'prev_token'``, the mean probability on
        key ``t - 1`` over the real query rows ``t >= 1``.
    """
    probs = jnp.asarray(probs, jnp.float32)
    real = jnp.sum(probs, axis=-1) > 0  # [L, B, N, T]
    if segment_ids is not None:
        real = real & (segment_ids != 0)[None, :, None, :]
    entropy = jnp.sum(_entropy(probs) * real, axis=(1, 3)) / jnp.maximum(real.sum((1, 3)), 1)
    prev = jnp.diagonal(probs, offset=-1, axis1=-2, axis2=-1)  # [L, B, N, T - 1]: p[t, t - 1]
    keep = real[..., 1:]
    if segment_ids is not None:
        keep = keep & (segment_ids[:, 1:] == segment_ids[:, :-1])[None, :, None, :]
    prev_token = jnp.sum(prev * keep, axis=(1, 3)) / jnp.maximum(keep.sum((1, 3)), 1)
    return {"entropy": entropy, "prev_token": prev_token}


def induction_score_from_maps(probs: jax.Array, half: int, *, offset: int = 1) -> jax.Array:
    """The induction score of each head on maps of ``[bos] r r`` sequences.

    With ``r_j`` at ``offset + j`` and again at ``q = offset + half + j`` (j = 0 .. half - 1),
    the token after ``r_j``'s earlier occurrence is at ``q - half + 1``; the score is the
    attention ``probs[..., q, q - half + 1]`` averaged over the batch and the ``half`` queries.

    Args:
        probs: ``[L, B, N, T, T]`` with ``T >= offset + 2 * half``.
        half: the length of ``r``.
        offset: tokens before the first copy (1 for a BOS, 0 for none).

    Returns:
        float32 ``[L, N]`` in [0, 1]; 1 for a perfect induction head.
    """
    q = jnp.arange(offset + half, offset + 2 * half)
    return jnp.mean(jnp.asarray(probs, jnp.float32)[..., q, q - half + 1], axis=(1, 3))


def induction_scores(
    params: dict,
    *,
    cfg,
    key: jax.Array,
    batch_size: int = 8,
    half: int = 16,
    bos: int | None = 0,
) -> jax.Array:
    """Induction score of every head on random repeated sequences.

    Args:
        params: model params.
        cfg: the model config (a kind with ``attn_probs``; ``max_seq_len`` must hold
            ``1 + 2 * half`` tokens with learned positions).
        key: PRNG key of the random tokens (:func:`llmzoo.inspect.induction.repeated_tokens`).
        batch_size: B sequences.
        half: the length of the repeated part.
        bos: the id put first (a run's BOS token), or None for none.

    Returns:
        float32 ``[L, N]``: :func:`induction_score_from_maps` on those sequences.

    Raises:
        ConfigError: a kind without attention.
    """
    tokens = repeated_tokens(key, batch_size, half, cfg.vocab_size, bos=bos)
    probs = attention_maps(params, {"tokens": tokens}, cfg=cfg)
    return induction_score_from_maps(probs, half, offset=int(bos is not None))


def repeated_sequence_loss(
    params: dict, tokens: jax.Array, half: int, *, cfg, offset: int = 1
) -> dict:
    """The loss on each copy of ``[bos] r r``: an induction signature is a second copy much
    easier than the first.

    Args:
        params: decoder params.
        tokens: ``[B, offset + 2 * half]`` from :func:`llmzoo.inspect.induction.repeated_tokens`.
        half: the length of ``r``.
        cfg: a decoder config with an LM head.
        offset: tokens before the first copy.

    Returns:
        float32 scalars ``'first'`` and ``'second'``: the mean next-token loss (nats) of predicting
        ``r_1 .. r_{half-1}`` in the first copy and again in the second.
    """
    logits = registry.get(cfg.kind).apply(params, {"tokens": tokens}, cfg=cfg)["logits"]
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]  # predicts token t + 1
    first = nll[:, offset : offset + half - 1]
    second = nll[:, offset + half : offset + 2 * half - 1]
    return {"first": first.mean(), "second": second.mean()}
