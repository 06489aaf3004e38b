"""Weight-only quantized matrices: a pytree leaf of integers and their scales.

A :class:`QuantArray` stands in for a weight ``w [*S, I..., O...]`` (S stacked leading dims, e.g.
the layers a ``lax.scan`` slices; I the input dims, contracted with the activations; O the output
dims) wherever the layers multiply through :func:`llmzoo.layers.linear.einsum`, so the same model
code runs on float and quantized params (the idea of jax-ml/jax-llm-examples' ``QuantArray``).

Symmetric round to nearest, no calibration: the flattened input ``I1 * .. * In`` is cut into G
groups of ``fan_in / G`` rows; each group of each output channel gets ``scale = max|w| / qmax``
and stores ``round(w / scale)`` in ``[-qmax, qmax]`` (qmax 127 for 8 bits, 7 for 4 bits), so
``|w - scale * q| <= scale / 2``. A group of zeros gets scale 0 and dequantizes to zeros.

Storage:

- 8 bits: ``values`` int8 ``[*S, I..., O...]``; usually one group (per output channel).
- 4 bits: ``values`` uint8 ``[*S, I1, .., In / 2, O...]``, two weights a byte along the last
  input dim (the even row in the low nibble, two's complement), which is also along the
  flattened input, so a byte never spans two matrices' rows; half a byte per weight in Orbax and
  safetensors alike.
- ``scales`` float32 ``[*S, G, O...]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

QMAX = {8: 127, 4: 7}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantArray:
    """Integer weights and their per-group scales (see the module docstring for the layout).

    Attributes:
        values: int8 ``[*S, I..., O...]`` (8 bits) or uint8 ``[*S, I1, .., In / 2, O...]``
            (4 bits, two a byte).
        scales: float32 ``[*S, G, O...]``, G groups over the flattened input dims.
        bits: 8 or 4 (static).
        n_in: the number of input dims (static; 2 for the attention output ``[N, H, D]``).
        n_out: the number of output dims (static).
        float_dtype: the dtype of the weight it replaces, which :meth:`dequantize` gives back
            (static).
    """

    values: jax.Array
    scales: jax.Array
    bits: int = dataclasses.field(default=8, metadata=dict(static=True))
    n_in: int = dataclasses.field(default=1, metadata=dict(static=True))
    n_out: int = dataclasses.field(default=1, metadata=dict(static=True))
    float_dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))

    @property
    def stack(self) -> int:
        """The number of stacked leading dims S (fewer after a scan or a slice)."""
        return len(self.values.shape) - self.n_in - self.n_out

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the weight it replaces, ``[*S, I..., O...]``."""
        shape = list(self.values.shape)
        shape[self.stack + self.n_in - 1] *= 8 // self.bits
        return tuple(shape)

    @property
    def ndim(self) -> int:
        """The rank of the weight it replaces."""
        return len(self.values.shape)

    @property
    def dtype(self):
        """The dtype of the weight it replaces."""
        return jnp.dtype(self.float_dtype)

    @property
    def groups(self) -> int:
        """G, the number of scale groups over the flattened input dims."""
        return self.scales.shape[self.stack]

    def integers(self) -> jax.Array:
        """The quantized integers as int8 ``[*S, I..., O...]`` (4-bit values unpacked)."""
        if self.bits == 8:
            return self.values
        return unpack_int4(self.values, self.stack + self.n_in - 1)

    def dequantize(self, dtype=None) -> jax.Array:
        """``scale * q`` in the weight's shape, as ``dtype`` (default: :attr:`dtype`; the
        product is formed in float32 unless ``dtype`` is given)."""
        out_dtype = self.dtype if dtype is None else jnp.dtype(dtype)
        dt = jnp.float32 if dtype is None else out_dtype
        s, shape = self.stack, self.shape
        q = self.integers().astype(dt).reshape(*shape[:s], self.groups, -1, *shape[s + self.n_in :])
        w = q * jnp.expand_dims(self.scales.astype(dt), s + 1)
        return w.reshape(shape).astype(out_dtype)


def n_groups(fan_in: int, group_size: int | None) -> int:
    """G for ``fan_in`` input rows: ``fan_in / group_size``, or 1 (one scale per output channel)
    when ``group_size`` is None or does not divide ``fan_in``."""
    if not group_size or fan_in % group_size:
        return 1
    return fan_in // group_size


def symmetric_round(x: jax.Array, axis: int, qmax: int) -> tuple[jax.Array, jax.Array]:
    """Symmetric round to nearest of ``x`` with one scale per slice along ``axis``.

    Returns:
        ``(q, scale)``: int8 ``q`` of ``x``'s shape in ``[-qmax, qmax]``, and float32 ``scale =
        max |x| / qmax`` over ``axis`` (kept as a size-1 dim), so ``|x - scale * q| <= scale / 2``.
        A slice of zeros gets scale 0 and values 0.
    """
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True) / qmax
    q = jnp.round(x / jnp.where(scale > 0, scale, 1.0))
    return jnp.clip(q, -qmax, qmax).astype(jnp.int8), scale


def quantize(
    w: jax.Array, *, bits: int, group_size: int | None = None, n_in: int = 1, stack: int = 0
) -> QuantArray:
    """Quantizes ``w [*S, I..., O...]`` by symmetric round to nearest.

    Args:
        w: the float weight.
        bits: 8 or 4.
        group_size: input rows (of the flattened input dims) sharing a scale; None: one scale
            per output channel; a size that does not divide the input uses one per channel too.
        n_in: the number of input dims I.
        stack: the number of stacked leading dims S.

    Raises:
        ValueError: 4 bits and an odd last input dim (the bytes hold pairs along it).
    """
    if bits not in QMAX:
        raise ValueError(f"bits={bits}; use 8 or 4")
    shape = w.shape
    lead, ins, outs = shape[:stack], shape[stack : stack + n_in], shape[stack + n_in :]
    if bits == 4 and ins[-1] % 2:
        raise ValueError(f"4-bit packing needs an even last input dim, not {ins[-1]} ({shape})")
    g = n_groups(math.prod(ins), group_size)
    q, scale = symmetric_round(w.reshape(*lead, g, -1, *outs), stack + 1, QMAX[bits])
    q = q.reshape(shape)
    values = q if bits == 8 else pack_int4(q, stack + n_in - 1)
    return QuantArray(
        values,
        jnp.squeeze(scale, stack + 1),
        bits=bits,
        n_in=n_in,
        n_out=len(outs),
        float_dtype=jnp.dtype(w.dtype).name,
    )


def pack_int4(q: jax.Array, axis: int) -> jax.Array:
    """int8 ``q`` in ``[-8, 7]`` as uint8, two a byte along ``axis`` (even index: low nibble)."""
    pairs = q.reshape(*q.shape[:axis], q.shape[axis] // 2, 2, *q.shape[axis + 1 :])
    u = jax.lax.bitcast_convert_type(pairs, jnp.uint8) & 0xF
    lo, hi = jnp.take(u, 0, axis=axis + 1), jnp.take(u, 1, axis=axis + 1)
    return lo | (hi << 4)


def unpack_int4(packed: jax.Array, axis: int) -> jax.Array:
    """The inverse of :func:`pack_int4`: int8 with ``axis`` twice as long."""
    lo = jax.lax.bitcast_convert_type(packed << 4, jnp.int8) >> 4  # arithmetic: sign-extends
    hi = jax.lax.bitcast_convert_type(packed, jnp.int8) >> 4
    q = jnp.stack([lo, hi], axis=axis + 1)
    return q.reshape(*packed.shape[:axis], 2 * packed.shape[axis], *packed.shape[axis + 1 :])


def quant_einsum(spec: str, x: jax.Array, w: QuantArray) -> jax.Array:
    """``jnp.einsum(spec, x, w.dequantize())`` in ``x.dtype``, for an unstacked ``w`` whose
    first :attr:`~QuantArray.n_in` letters in ``spec`` are its inputs.

    With one group (per output channel) the integers are multiplied first and the product scaled
    per output (in float32); with several groups the weight is dequantized in ``x.dtype`` first.
    """
    dt = x.dtype
    if w.groups > 1:
        return jnp.einsum(spec, x, w.dequantize(dt))
    w_spec, out_spec = spec.split(",")[1].split("->")
    y = jnp.einsum(spec, x, w.integers().astype(dt))
    scale = w.scales.reshape(w.scales.shape[1:]).astype(jnp.float32)  # [O...]
    y = jnp.einsum(f"{out_spec},{w_spec[w.n_in :]}->{out_spec}", y.astype(jnp.float32), scale)
    return y.astype(dt)


def merge_quant_inputs(w: QuantArray, n: int) -> QuantArray:
    """An unstacked ``w`` with its first ``n`` input dims as one (scales unchanged: their groups
    are over the flattened input already)."""
    v = w.values
    return dataclasses.replace(
        w, values=v.reshape(math.prod(v.shape[:n]), *v.shape[n:]), n_in=w.n_in - n + 1
    )


def storage_bytes(x) -> int:
    """The bytes ``x`` (an array or a :class:`QuantArray`) occupies as stored."""
    if isinstance(x, QuantArray):
        return storage_bytes(x.values) + storage_bytes(x.scales)
    return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


__all__ = [
    "QMAX",
    "QuantArray",
    "n_groups",
    "quantize",
    "symmetric_round",
    "pack_int4",
    "unpack_int4",
    "quant_einsum",
    "merge_quant_inputs",
    "storage_bytes",
]
