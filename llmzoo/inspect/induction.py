"""Repeated random sequences, and a tiny attention-only decoder trained on them until it grows
induction heads (Olsson et al., 2022, "In-context learning and induction heads").

On ``[BOS] r r`` (``r`` random tokens) the first copy is unpredictable and the second is
predictable only by looking back: an induction head at a token of the second copy attends to the
token that followed the same token in the first copy and copies it. A 2-layer model needs two
heads for this (a previous-token head in layer 0 and the induction head in layer 1, composed
through the keys). The model uses ALiBi positions, which carry no absolute position: a head
cannot learn "attend ``half - 1`` tokens back" as a shortcut, so the loss falls only when real
induction heads form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from llmzoo.models import decoder
from llmzoo.models.decoder import DecoderConfig


def repeated_tokens(
    key: jax.Array, batch_size: int, half: int, vocab_size: int, *, bos: int | None = 0
) -> jax.Array:
    """Random sequences repeated once: ``[bos] r r``.

    Args:
        key: PRNG key.
        batch_size: B.
        half: the length of ``r``.
        vocab_size: V; ``r`` is uniform over the ids other than ``bos``.
        bos: the id put first, or None for ``r r`` alone.

    Returns:
        int32 ``[B, o + 2 * half]`` with ``o = 1`` with ``bos`` (else 0): ``r_j`` at ``o + j``
        and again at ``o + half + j``.
    """
    skip = bos is not None
    r = jax.random.randint(key, (batch_size, half), 0, vocab_size - skip, dtype=jnp.int32)
    if skip:
        r = r + (r >= bos)  # the ids other than bos
    parts = [jnp.full((batch_size, 1), bos, jnp.int32)] if skip else []
    return jnp.concatenate([*parts, r, r], axis=1)


def induction_prompts(
    key: jax.Array, batch_size: int, half: int, vocab_size: int, *, copied: int | None = None
) -> dict:
    """Clean and corrupted prompts for patching an induction head (BOS id 0).

    The clean prompt is ``[0] r r_0 .. r_{c-1}`` (``c = copied``): its answer ``r_c`` can only
    be read from the first copy, where it follows ``r_{c-1}``. The corrupted prompt replaces
    that earlier ``r_c`` by another token ``x``, so an induction head predicts ``x`` instead.

    Args:
        key: PRNG key.
        batch_size: B.
        half: the length of ``r``.
        vocab_size: V.
        copied: c in ``1 .. half - 1`` (default ``half // 2``).

    Returns:
        ``'clean'``, ``'corrupt'``: int32 ``[B, 1 + half + c]``; ``'answer'`` (``r_c``) and
        ``'wrong'`` (``x``): int32 ``[B]``.
    """
    c = half // 2 if copied is None else copied
    k1, k2 = jax.random.split(key)
    clean = repeated_tokens(k1, batch_size, half, vocab_size)[:, : 1 + half + c]
    answer = clean[:, 1 + c]
    shift = jax.random.randint(k2, (batch_size,), 1, vocab_size - 1, dtype=jnp.int32)
    wrong = 1 + (answer - 1 + shift) % (vocab_size - 1)  # an id other than 0 and answer
    return {
        "clean": clean,
        "corrupt": clean.at[:, 1 + c].set(wrong),
        "answer": answer,
        "wrong": wrong,
    }


def attention_only_config(
    vocab_size: int = 32, half: int = 16, d_model: int = 64, n_heads: int = 4, n_layers: int = 2
) -> DecoderConfig:
    """A tiny decoder for :func:`train_induction` (float32, ALiBi, tied embeddings).

    The decoder always has an MLP; this one is 1 unit wide and :func:`attention_only` holds its
    weights at zero, so that the model computes exactly an attention-only transformer.
    """
    return DecoderConfig(
        vocab_size=vocab_size, max_seq_len=2 * half + 1, d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, d_ff=1, position="alibi", dtype="float32", param_dtype="float32",
    )  # fmt: skip


def attention_only(params: dict) -> dict:
    """``params`` with every MLP weight set to zero: each block's MLP then outputs exactly 0
    (its activation maps 0 to 0), leaving the attention sublayers alone on the residual stream."""
    layers = dict(params["layers"])
    layers["mlp"] = jax.tree.map(jnp.zeros_like, layers["mlp"])
    return {**params, "layers": layers}


def second_copy_nll(params: dict, tokens: jax.Array, half: int, *, cfg) -> jax.Array:
    """Mean next-token loss (nats) on the second copy of ``[BOS] r r``: predicting ``r_1 ..
    r_{half-1}`` again. ``tokens: [B, 1 + 2 * half]``; returns a float32 scalar."""
    logits = decoder.apply(params, {"tokens": tokens}, cfg=cfg)["logits"].astype(jnp.float32)
    lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]  # [B, T - 1]
    return nll[:, half + 1 :].mean()


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "batch_size", "half"))
def _train(params, key, cfg, steps, batch_size, half, learning_rate):
    opt = optax.adam(learning_rate)

    def loss(p, tokens):
        return second_copy_nll(attention_only(p), tokens, half, cfg=cfg)

    def step(carry, k):
        p, s = carry
        tokens = repeated_tokens(k, batch_size, half, cfg.vocab_size)
        value, grads = jax.value_and_grad(loss)(p, tokens)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    keys = jax.random.split(key, steps)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), keys)
    return attention_only(params), losses


def train_induction(
    key: jax.Array,
    cfg: DecoderConfig,
    *,
    steps: int = 500,
    batch_size: int = 32,
    half: int = 16,
    learning_rate: float = 1e-2,
    params: dict | None = None,
) -> tuple[dict, jax.Array]:
    """Trains an attention-only decoder on fresh ``[0] r r`` batches (BOS id 0) with Adam.

    One jitted ``lax.scan`` over the steps; the loss is :func:`second_copy_nll`.

    Args:
        key: PRNG key (init, when ``params`` is None, and the batches).
        cfg: e.g. :func:`attention_only_config`; ``max_seq_len >= 1 + 2 * half``.
        steps: Adam steps.
        batch_size: sequences a step.
        half: the length of the repeated random part.
        learning_rate: Adam's step size.
        params: start here instead of a fresh init.

    Returns:
        ``(params, losses)``: trained params with the MLPs at zero (:func:`attention_only`) and
        float32 ``[steps]`` losses.
    """
    init_key, data_key = jax.random.split(key)
    if params is None:
        params = attention_only(decoder.init(init_key, cfg))
    return _train(params, data_key, cfg, steps, batch_size, half, learning_rate)
