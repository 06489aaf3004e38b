"""Token samplers: greedy, temperature, top-k and top-p (nucleus, Holtzman et al., 2020)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llmzoo.errors import GenerationError


def check_sampling(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """Checks the sampler arguments of :func:`sample` on the host, before any tracing.

    The defaults are the "off" values, so a caller checks only what it was given.

    Raises:
        GenerationError: ``temperature`` is not in ``[0, inf)``, ``top_k`` is negative, or
            ``top_p`` is not in ``(0, 1]``.
    """
    if not 0.0 <= temperature < math.inf:
        raise GenerationError(
            f"temperature={temperature} is outside [0, inf); use 0 for greedy decoding or a "
            "positive value to sample"
        )
    if top_k < 0:
        raise GenerationError(
            f"top_k={top_k} is negative; use 0 to keep every token or k >= 1 to sample from "
            "the k most likely"
        )
    if not 0.0 < top_p <= 1.0:
        raise GenerationError(
            f"top_p={top_p} is outside (0, 1]; use 1.0 to keep every token or a probability "
            "mass in (0, 1) for nucleus sampling"
        )


def sample(
    logits: jax.Array,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Draws one token per row.

    Args:
        logits: ``[B, V]``.
        key: PRNG key.
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (0 = all).
        top_p: keep the smallest set of tokens whose probability reaches p (1.0 = all).

    Returns:
        ``[B]`` int32 token ids.

    Raises:
        GenerationError: an argument is out of range (see :func:`check_sampling`).
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # mass strictly before each sorted token; keep tokens whose preceding mass < p
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
