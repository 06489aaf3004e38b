"""The logit lens (nostalgebraist, 2020): read the residual stream after every block as if it
were the last one, by decoding it through the final norm and the LM head.

Row 0 decodes the embeddings (what a model with no blocks would predict); the last row is the
stream the model itself decodes, so it equals the model's log-softmax logits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmzoo.errors import ConfigError
from llmzoo.models import decoder


def check_lm_decoder(cfg, what: str) -> None:
    """Raises ConfigError unless ``cfg`` is a ``decoder`` with an LM head (what ``what`` needs)."""
    kind = getattr(cfg, "kind", type(cfg).__name__)
    if kind != "decoder":
        raise ConfigError(f"{what} supports model kind decoder, not {kind}")
    if cfg.head != "lm":
        raise ConfigError(f"{what} needs an LM head; this decoder has model.head={cfg.head!r}")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _lens(params: dict, batch: dict, cfg) -> dict:
    out = decoder.apply(params, batch, cfg=cfg, capture=("residual",))
    logits = decoder.decode_hidden(params, out["captured"]["residual"], cfg=cfg)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return {"log_probs": log_probs, "top": jnp.argmax(log_probs, axis=-1).astype(jnp.int32)}


def logit_lens(params: dict, batch: dict, *, cfg) -> dict:
    """Decodes every row of the residual stream through the final norm and the LM head.

    Args:
        params: decoder params.
        batch: ``tokens [B, T]`` (and optional ``positions``, ``segment_ids``) as for
            :func:`llmzoo.models.decoder.apply`.
        cfg: a :class:`~llmzoo.models.decoder.DecoderConfig` with ``head='lm'``.

    Returns:
        ``'log_probs'``: float32 ``[L + 1, B, T, V]``, row 0 from the embeddings, row l + 1
        after block l (the last row is the model's own ``log_softmax(logits)``);
        ``'top'``: int32 ``[L + 1, B, T]``, each row's most likely next token.

    Raises:
        ConfigError: a kind other than ``decoder``, or a decoder without an LM head.
    """
    check_lm_decoder(cfg, "the logit lens")
    return _lens(params, batch, cfg)


def target_log_probs(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
    """Each lens row's log-probability of given tokens.

    Args:
        log_probs: ``[L + 1, B, T, V]`` from :func:`logit_lens`.
        targets: ``[B, T]`` token ids (e.g. the next tokens, or the model's final top tokens).

    Returns:
        float32 ``[L + 1, B, T]``.
    """
    idx = jnp.broadcast_to(targets[None, ..., None], log_probs.shape[:-1] + (1,))
    return jnp.take_along_axis(log_probs, idx, axis=-1)[..., 0]
