"""A weight leaf that reports the second moment of its inputs: calibration without model changes.

A :class:`Probe` stands in for a float weight ``w [*S, I..., O...]`` wherever the layers multiply
through :func:`llmzoo.layers.linear.einsum`. It multiplies as ``w`` does, and hands
``X^T X [fan_in, fan_in]`` of the activations ``X [rows, fan_in]`` (float32, the input dims
flattened, every other dim of ``x`` as rows) to a host function with ``jax.debug.callback``,
together with its static ``name``, its stacked index (a ``lax.scan`` over the layers slices
``index [*S]`` as it slices ``w``, so a callback knows its layer) and the row count. GPTQ
(:mod:`llmzoo.compress.gptq`) builds its Hessians ``2 X^T X / n`` from these sums.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Probe:
    """A float weight whose products report their inputs' ``X^T X``.

    Attributes:
        w: the weight ``[*S, I..., O...]``.
        index: int32 ``[*S]``, the flat stacked index of each slice (``arange``, reshaped).
        name: the weight's name, passed to ``sink`` (static).
        sink: the host function ``sink(name, index, xtx, rows)`` (static; compared by identity).
    """

    w: jax.Array
    index: jax.Array
    name: str = dataclasses.field(default="", metadata=dict(static=True))
    sink: Callable | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape."""
        return self.w.shape

    @property
    def ndim(self) -> int:
        """The weight's rank."""
        return self.w.ndim

    @property
    def dtype(self):
        """The weight's dtype."""
        return self.w.dtype


def probe(w: jax.Array, *, name: str, sink: Callable, stack: int = 0) -> Probe:
    """``w`` as a :class:`Probe` reporting to ``sink`` under ``name``; its ``stack`` leading dims
    are numbered row-major (one index per matrix)."""
    lead = w.shape[:stack]
    index = jnp.arange(math.prod(lead), dtype=jnp.int32).reshape(lead)
    return Probe(w, index, name=name, sink=sink)


def probe_einsum(spec: str, x: jax.Array, w: Probe) -> jax.Array:
    """``jnp.einsum(spec, x, w.w)`` for an unstacked probe, reporting ``X^T X`` of ``x``'s input
    dims (the weight's letters that ``x`` has, in the weight's order) to ``w.sink``."""
    x_spec, rest = spec.split(",")
    w_spec = rest.split("->")[0]
    ins = "".join(c for c in w_spec if c in x_spec)
    kept = "".join(c for c in x_spec if c not in ins)
    rows = jnp.einsum(f"{x_spec}->{kept}{ins}", x)
    rows = rows.reshape(-1, math.prod(rows.shape[rows.ndim - len(ins) :])).astype(jnp.float32)
    xtx = jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST)
    report = functools.partial(w.sink, w.name, rows=rows.shape[0])
    jax.debug.callback(report, w.index, xtx)
    return jnp.einsum(spec, x, w.w.astype(x.dtype))


def merge_probe_inputs(w: Probe, n: int) -> Probe:
    """An unstacked probe with its first ``n`` input dims as one."""
    v = w.w
    return dataclasses.replace(w, w=v.reshape(math.prod(v.shape[:n]), *v.shape[n:]))


__all__ = ["Probe", "probe", "probe_einsum", "merge_probe_inputs"]
