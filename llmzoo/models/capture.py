"""Activation capture and patching: what a kind's ``apply(..., capture=, patch=)`` can see.

A model kind names the intermediates it exposes (:data:`DECODER`, :data:`ENCODER`, ...). With
``capture=()`` and ``patch=None`` (the defaults) a kind runs exactly the program it runs without
them; a requested name adds one stacked output per layer under ``out['captured']``, and a patch
replaces an intermediate by given values where a boolean ``where`` is True (activation patching,
causal tracing). Inside a kind's scan over layers, a :class:`Taps` object carries one layer's
slice of the patches and collects that layer's captures.

Shapes (L layers; the residual stream has one more row, the embeddings entering layer 0):

- ``attn_probs`` ``[L, B, N, T, S]`` float32 attention probabilities (rows sum to 1 over the
  keys a query may see; 0 for a query that sees none);
- ``residual`` ``[L + 1, B, T, D]``: row 0 the embeddings, row l + 1 the output of block l;
- ``attn_out``, ``mlp_out`` ``[L, B, T, D]``: each sublayer's output before its residual add;
- ``head_out`` ``[L, B, T, N, H]``: each head's attention output before the output projection;
- ``state`` (recurrent kinds) ``[L, B, T, ...]``: the recurrent state after each token
  (``rnn`` ``[L, B, T, 2 or 1, D]`` (h, c) or (h,); ``mamba`` the SSM state ``[L, B, T, E, Z]``;
  ``rwkv`` a dict of its cache's arrays);
- seq2seq adds ``cross_attn_probs`` ``[L, B, N, T, S]``, ``encoder_attn_probs``
  ``[L_enc, B, N, S, S]`` and ``encoder_residual`` ``[L_enc + 1, B, S, D]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmzoo.errors import ConfigError

DECODER = ("attn_probs", "residual", "attn_out", "mlp_out", "head_out")
ENCODER = ("attn_probs", "residual", "attn_out", "mlp_out", "head_out")
SEQ2SEQ = (*DECODER, "cross_attn_probs", "encoder_attn_probs", "encoder_residual")
RECURRENT = ("residual", "state")
PATCHABLE = ("residual", "attn_out", "mlp_out", "head_out")
ATTENTION = ("attn_probs", "attn_out", "head_out")


def check_capture(kind: str, capture, patch, available: tuple[str, ...]) -> tuple[str, ...]:
    """Validates the ``capture`` names and ``patch`` keys a kind was given.

    Args:
        kind: the model kind, for the message.
        capture: a string or a sequence of names.
        patch: None or ``{name: (values, where)}``.
        available: the names the kind exposes.

    Returns:
        ``capture`` as a tuple.

    Raises:
        ConfigError: a name the kind does not expose (a recurrent kind asked for attention maps),
            or a malformed patch.
    """
    names = (capture,) if isinstance(capture, str) else tuple(capture)
    patchable = tuple(n for n in available if n in PATCHABLE)
    for name in names:
        if name not in available:
            why = "has no attention, so it has no" if name in ATTENTION else "cannot capture"
            raise ConfigError(
                f"model kind {kind} {why} {name!r}; it can capture {', '.join(available)}"
            )
    for name, value in (patch or {}).items():
        if name not in patchable:
            raise ConfigError(
                f"model kind {kind} cannot patch {name!r}; it can patch {', '.join(patchable)}"
            )
        if not (isinstance(value, tuple | list) and len(value) == 2):
            raise ConfigError(f"patch[{name!r}] must be a pair (values, where)")
    return names


def _apply_patch(value: jax.Array, patch) -> jax.Array:
    """``value`` with ``patch = (values, where)`` put in where ``where`` is True; ``where`` has
    ``value``'s leading dims (trailing feature dims dropped), or broadcasts to them."""
    new, where = patch
    where = jnp.asarray(where, bool)
    where = where.reshape(where.shape + (1,) * (value.ndim - where.ndim))
    return jnp.where(where, new.astype(value.dtype), value)


class Taps:
    """One layer's view of the capture request: records captures, applies patches.

    A kind builds one per layer inside its scan body and returns :attr:`captured` as part of the
    scan's per-layer outputs; with nothing requested every method is the identity.

    Attributes:
        want: the names to capture.
        patch: ``{name: (values, where)}`` sliced to this layer, or empty.
        captured: ``{name: array}`` recorded so far.
    """

    def __init__(self, want: tuple[str, ...] = (), patch: dict | None = None):
        self.want = want
        self.patch = patch or {}
        self.captured: dict[str, jax.Array] = {}

    def __bool__(self) -> bool:
        return bool(self.want or self.patch)

    def needs(self, name: str) -> bool:
        """Whether ``name`` is captured or patched at this layer."""
        return name in self.want or name in self.patch

    def __call__(self, name: str, value: jax.Array) -> jax.Array:
        """Patches ``value`` if ``name`` is patched, records it if captured; returns it."""
        if name in self.patch:
            value = _apply_patch(value, self.patch[name])
        if name in self.want:
            self.captured[name] = value
        return value


NO_TAPS = Taps()


def layer_taps(capture: tuple[str, ...], patch: dict | None = None) -> Taps:
    """The :class:`Taps` of one layer application (the shared no-op when nothing is asked)."""
    return Taps(capture, patch) if capture or patch else NO_TAPS


def enter(x: jax.Array, patch: dict | None) -> tuple[jax.Array, dict]:
    """Splits off row 0 of a ``[L + 1, ...]`` ``residual`` patch and applies it to the embeddings
    ``x`` entering block 0; the other patches pass through.

    Returns:
        ``(x, layer_patches)``: the (patched) embeddings and what the scan over layers slices
        (``[L, ...]`` rows: the residual rows that follow the blocks, and the other patches).
    """
    patch = dict(patch or {})
    if "residual" not in patch:
        return x, patch
    values, where = patch.pop("residual")
    where = jnp.asarray(where, bool)
    patch["residual"] = (values[1:], where[1:])
    return _apply_patch(x, (values[0], where[0])), patch


def gather(first: jax.Array | None, per_layer: dict, want: tuple[str, ...]) -> dict:
    """Stacks the captures into ``out['captured']``: per-layer outputs as they come from the scan
    (``[L, ...]``), the residual stream with the embeddings ``first`` prepended (``[L + 1, ...]``).
    """
    out = {}
    for name in want:
        value = per_layer[name]
        if name == "residual":
            value = jnp.concatenate([first[None].astype(value.dtype), value], axis=0)
        out[name] = value
    return out
