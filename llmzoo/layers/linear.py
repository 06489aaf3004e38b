"""Weight leaves and the one helper that multiplies activations by them.

Every weight matmul of the layers goes through :func:`einsum`. A plain array ``w`` gives
``jnp.einsum(spec, x, w.astype(x.dtype))``, computed as one 2-D matmul where the spec allows; a
:class:`LoraWeight` (Hu et al. 2021, "LoRA") gives
``x . stop_gradient(w) + scale * (dropout(x) . a) . b`` without ever forming the merged matrix, so
the frozen base gets no gradient and the adapters ``a``, ``b`` do. A
:class:`~llmzoo.layers.quant.QuantArray` (weight-only int8 / int4) is multiplied as its integers
times its scales (:func:`llmzoo.layers.quant.quant_einsum`); a
:class:`~llmzoo.layers.probe.Probe` (calibration, e.g. GPTQ) as its float weight, reporting the
``X^T X`` of its inputs (:func:`llmzoo.layers.probe.probe_einsum`).

A weight's dims split into *input* dims (contracted with ``x``) and *output* dims, in that order:
``wq [D, N, H]`` has input ``D``; the attention output ``wo [N, H, D]`` has inputs ``N, H``. The
helper reads the split from the einsum spec (the weight's letters that ``x`` also has are its
inputs), and a LoRA adapter keeps it in its shapes: ``a [I..., R]``, ``b [R, O...]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from llmzoo.layers.probe import Probe, merge_probe_inputs, probe_einsum
from llmzoo.layers.quant import QuantArray, merge_quant_inputs, quant_einsum
from llmzoo.layers.residual import dropout


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoraWeight:
    """A frozen base weight plus a trainable low-rank update ``scale * a @ b``.

    Attributes:
        w: the base weight ``[*S, I..., O...]`` (S: stacked leading dims, e.g. the layers of a
            ``lax.scan``, which slices every field alike).
        a: ``[*S, I..., R]``, the down projection (R the rank).
        b: ``[*S, R, O...]``, the up projection (zero at the start of training).
        key: a PRNG key array ``[*S]`` for dropout on the adapter's input, or None (no dropout).
        scale: ``alpha / R`` (static).
        dropout: the dropout rate on the adapter's input (static).
    """

    w: jax.Array
    a: jax.Array
    b: jax.Array
    key: jax.Array | None = None
    scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    dropout: float = dataclasses.field(default=0.0, metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """The base weight's shape."""
        return self.w.shape

    @property
    def ndim(self) -> int:
        """The base weight's rank."""
        return self.w.ndim

    @property
    def dtype(self):
        """The base weight's dtype."""
        return self.w.dtype

    def merged(self) -> jax.Array:
        """``w + scale * a @ b`` in ``w``'s shape and dtype (float32 arithmetic)."""
        r = self.a.shape[-1]
        stack = self.a.ndim + self.b.ndim - 2 - self.w.ndim
        lead, n_in = self.w.shape[:stack], self.a.ndim - 1 - stack
        fan_in = math.prod(self.w.shape[stack : stack + n_in])
        a = self.a.astype(jnp.float32).reshape(*lead, fan_in, r)
        b = self.b.astype(jnp.float32).reshape(*lead, r, -1)
        delta = (a @ b).reshape(self.w.shape)
        return (self.w.astype(jnp.float32) + self.scale * delta).astype(self.w.dtype)


def einsum(spec: str, x: jax.Array, w) -> jax.Array:
    """``x`` times the weight ``w`` by the two-operand einsum ``spec``, in the dtype of ``x``.

    Args:
        spec: e.g. ``'btd,dnh->btnh'``; the weight's letters list its input dims, then its
            output dims.
        x: the activations.
        w: a plain array, a :class:`LoraWeight` or a :class:`~llmzoo.layers.quant.QuantArray`
            (unstacked: inside the layer scan).

    Returns:
        The einsum's output, in ``x.dtype``.
    """
    if isinstance(w, QuantArray):
        return quant_einsum(spec, x, w)
    if isinstance(w, Probe):  # calibration: reports its inputs (llmzoo.layers.probe)
        return probe_einsum(spec, x, w)
    if not isinstance(w, LoraWeight):
        return _matmul(spec, x, w)
    x_spec, rest = spec.split(",")
    w_spec, out_spec = rest.split("->")
    n_in = w.a.ndim - 1
    ins, outs = w_spec[:n_in], w_spec[n_in:]
    if any(c not in x_spec or c in out_spec for c in ins) or any(c in x_spec for c in outs):
        raise ValueError(
            f"einsum {spec!r}: a LoRA weight's first {n_in} dims must be its inputs (in x, not "
            f"in the output) and the rest its outputs"
        )
    r = next(c for c in "rzyxwvu" if c not in spec)
    kept = "".join(c for c in x_spec if c not in ins)
    dt = x.dtype
    base = jnp.einsum(spec, x, jax.lax.stop_gradient(w.w).astype(dt))
    x_drop = dropout(x, w.dropout, w.key)
    down = jnp.einsum(f"{x_spec},{ins}{r}->{kept}{r}", x_drop, w.a.astype(dt))
    up = jnp.einsum(f"{kept}{r},{r}{outs}->{out_spec}", down, w.b.astype(dt))
    return base + w.scale * up


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _matmul(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``jnp.einsum(spec, x, w.astype(x.dtype))``, as one 2-D ``[M, I] @ [I, O]`` matmul when
    ``spec`` has that form: ``x`` is its kept dims then the weight's inputs, the output its kept
    dims then the weight's outputs (``'btd,dnh->btnh'``, ``'...i,io->...o'``).

    Autodiff of the einsum contracts the weight's gradient over two or more token dims (``b, t``),
    and XLA:CPU then writes an activation's gradient a second time transposed and multiplies by a
    slower kernel: a GPT-2 MLP's forward and backward took 1.8x as long as with the 2-D matmul.

    Under ``jax.checkpoint`` the backward pass keeps ``x`` and ``w`` themselves, not their
    reshaped or cast copies: inside the layer scan, a copy would be stacked once per layer and
    per matmul (the same normed ``x`` once for each of ``wq, wk, wv``), and the weight's slice of
    the stacked params, which the scan already has, a second time.
    """
    w = w.astype(x.dtype)
    x_spec, rest = spec.split(",")
    w_spec, out_spec = rest.split("->")
    n_in = sum(c in x_spec for c in w_spec)
    ins, outs = w_spec[:n_in], w_spec[n_in:]
    kept = x_spec[: len(x_spec) - n_in]
    if x_spec != kept + ins or out_spec != kept + outs or "." in ins + outs:
        return jnp.einsum(spec, x, w)
    lead = x.shape[: x.ndim - n_in]
    x2 = x.reshape(math.prod(lead), math.prod(w.shape[:n_in]))
    out = x2 @ w.reshape(x2.shape[1], -1)
    return out.reshape(*lead, *w.shape[n_in:])


def merge_inputs(w, n: int):
    """``w [I1..In, O...]`` with its first ``n`` (input) dims as one: ``[I1 * .. * In, O...]``.

    For a :class:`LoraWeight`, ``w`` and ``a`` are reshaped alike (``b`` is unchanged); the
    attention output projection uses this to run as one 2-D matmul. A
    :class:`~llmzoo.layers.quant.QuantArray` keeps its scales.
    """
    if isinstance(w, QuantArray):
        return merge_quant_inputs(w, n)
    if isinstance(w, Probe):
        return merge_probe_inputs(w, n)
    if not isinstance(w, LoraWeight):
        return w.reshape(math.prod(w.shape[:n]), *w.shape[n:])
    fan_in = math.prod(w.w.shape[:n])
    return dataclasses.replace(
        w, w=w.w.reshape(fan_in, *w.w.shape[n:]), a=w.a.reshape(fan_in, w.a.shape[-1])
    )
