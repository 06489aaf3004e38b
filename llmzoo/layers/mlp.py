"""Feed-forward blocks: plain (GELU, GELU-tanh, ReLU, SiLU) and gated (SwiGLU, GeGLU).

Params: ``w_up [D, F]`` (+ ``w_gate [D, F]`` when gated), ``w_down [F, D]``, optional biases
``b_up [F]``, ``b_down [D]``.
"""

from __future__ import annotations

import functools

import jax

from llmzoo.layers import linear
from llmzoo.params import ParamSpec, normal, zeros

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
GATED = {"swiglu": "silu", "geglu": "gelu_tanh", "geglu_exact": "gelu"}


def activation_fn(name: str):
    """Returns the elementwise activation called ``name`` (see ``ACTIVATIONS``).

    Its gradient keeps only the input and recomputes the rest: differentiating GELU-tanh
    directly saves four ``[B, T, F]`` intermediates per layer for the backward pass, the
    largest activations of a block, where recomputing them costs a few elementwise passes.
    """
    try:
        return jax.checkpoint(ACTIVATIONS[name])
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def mlp_specs(d: int, f: int, kind: str, *, bias: bool, std: float = 0.02, out_std=None) -> dict:
    """Declares MLP params.

    Args:
        d: model width D.
        f: hidden width F.
        kind: an activation name (``'gelu'``, ``'gelu_tanh'``, ``'relu'``, ``'silu'``) or a gated
            variant (``'swiglu'``, ``'geglu'``, ``'geglu_exact'``).
        bias: whether the projections have biases.
        std: init std of the input projections.
        out_std: init std of ``w_down`` (defaults to ``std``).
    """
    specs = {
        "w_up": ParamSpec((d, f), logical_axes=("embed", "mlp"), init=normal(std)),
        "w_down": ParamSpec((f, d), logical_axes=("mlp", "embed"), init=normal(out_std or std)),
    }
    if kind in GATED:
        specs["w_gate"] = ParamSpec((d, f), logical_axes=("embed", "mlp"), init=normal(std))
    elif kind not in ACTIVATIONS:
        raise ValueError(f"unknown mlp kind {kind!r}; choose one of {sorted(ACTIVATIONS | GATED)}")
    if bias:
        specs["b_up"] = ParamSpec((f,), logical_axes=("mlp",), init=zeros)
        specs["b_down"] = ParamSpec((d,), logical_axes=("embed",), init=zeros)
        if kind in GATED:
            specs["b_gate"] = ParamSpec((f,), logical_axes=("mlp",), init=zeros)
    return specs


def mlp(params: dict, x: jax.Array, *, kind: str) -> jax.Array:
    """Applies the feed-forward block.

    Gated kinds compute ``w_down(act(x w_gate) * (x w_up))`` (Shazeer, 2020, "GLU Variants").

    Args:
        params: see :func:`mlp_specs`.
        x: ``[B, T, D]``.
        kind: as in :func:`mlp_specs`.

    Returns:
        ``[B, T, D]``.
    """
    up = linear.einsum("btd,df->btf", x, params["w_up"])
    if "b_up" in params:
        up = up + params["b_up"].astype(x.dtype)
    gate = None
    if kind in GATED:
        gate = linear.einsum("btd,df->btf", x, params["w_gate"])
        if "b_gate" in params:
            gate = gate + params["b_gate"].astype(x.dtype)
    out = _activate_down(kind, up, gate, params["w_down"])
    if "b_down" in params:
        out = out + params["b_down"].astype(x.dtype)
    return out


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _activate_down(kind: str, up: jax.Array, gate: jax.Array | None, w_down) -> jax.Array:
    """``act(up) @ w_down`` (gated: ``(act(gate) * up) @ w_down``); ``up, gate: [B, T, F]``.

    The backward pass keeps ``up`` and ``gate``, which it needs anyway, and recomputes the
    activated ``[B, T, F]`` from them rather than keeping it too: one elementwise pass instead of
    the largest activation of the block stored per layer (inside the layer scan, a zero-filled
    ``[L, B, T, F]`` buffer written in the forward pass and read back in the backward).
    """
    if gate is None:
        h = activation_fn(kind)(up)
    else:
        h = activation_fn(GATED[kind])(gate) * up
    return linear.einsum("btf,fd->btd", h, w_down)
