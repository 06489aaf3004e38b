"""Normalisation layers: LayerNorm and RMSNorm as pure functions.

Params are ``{'scale': [D]}`` plus ``{'bias': [D]}`` for LayerNorm with bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmzoo.params import ParamSpec, ones, zeros


def norm_specs(d: int, kind: str = "layernorm", *, bias: bool = True, zero_centered=False) -> dict:
    """Declares the params of a norm over a trailing dimension of size ``d``.

    Args:
        d: model width D.
        kind: ``'layernorm'`` or ``'rmsnorm'``.
        bias: LayerNorm only: whether it has a learned bias.
        zero_centered: store ``scale - 1`` (Gemma's RMSNorm multiplies by ``1 + scale``), so
            the scale initialises to zeros.
    """
    specs = {
        "scale": ParamSpec((d,), logical_axes=("embed",), init=zeros if zero_centered else ones)
    }
    if kind == "layernorm" and bias:
        specs["bias"] = ParamSpec((d,), logical_axes=("embed",), init=zeros)
    return specs


def layer_norm(params: dict, x: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """LayerNorm (Ba et al., 2016) over the last axis, computed in float32.

    Its gradient keeps only ``params`` and ``x`` and recomputes the statistics (see
    :func:`rms_norm`).

    Args:
        params: ``{'scale': [D], 'bias'?: [D]}``.
        x: ``[..., D]``.
        eps: added to the variance.

    Returns:
        ``[..., D]`` in the dtype of ``x``.
    """
    return jax.checkpoint(_layer_norm, static_argnums=(2,))(params, x, eps)


def _layer_norm(params: dict, x: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * params["scale"].astype(jnp.float32)
    if "bias" in params:
        y = y + params["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm(params: dict, x: jax.Array, *, eps: float = 1e-6, zero_centered=False) -> jax.Array:
    """RMSNorm (Zhang & Sennrich, 2019) over the last axis, computed in float32.

    Its gradient keeps only ``params`` and ``x`` and recomputes the rest: differentiating the
    float32 computation directly would save its ``[..., D]`` intermediates for every layer, and
    on memory-bound hardware writing and reading them back costs more than recomputing them.

    Args:
        params: ``{'scale': [D]}``.
        x: ``[..., D]``.
        eps: added to the mean square.
        zero_centered: multiply by ``1 + scale`` (Gemma) instead of ``scale``.

    Returns:
        ``[..., D]`` in the dtype of ``x``.
    """
    return jax.checkpoint(_rms_norm, static_argnums=(2, 3))(params, x, eps, zero_centered)


def _rms_norm(params: dict, x: jax.Array, eps: float, zero_centered: bool) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    scale = params["scale"].astype(jnp.float32)
    if zero_centered:
        scale = 1.0 + scale
    return (y * scale).astype(x.dtype)


def apply_norm(
    params: dict, x: jax.Array, *, kind: str, eps: float, zero_centered: bool = False
) -> jax.Array:
    """Dispatches to :func:`layer_norm` or :func:`rms_norm` by ``kind``. ``x: [..., D]``."""
    if kind == "layernorm":
        return layer_norm(params, x, eps=eps)
    if kind == "rmsnorm":
        return rms_norm(params, x, eps=eps, zero_centered=zero_centered)
    raise ValueError(f"unknown norm kind {kind!r}; use 'layernorm' or 'rmsnorm'")
