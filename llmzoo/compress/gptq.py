"""GPTQ: weight-only quantization calibrated on activations (Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers").

Round to nearest (:mod:`llmzoo.layers.quant`) minimizes each weight's own error; GPTQ minimizes
each matrix's output error ``||X W - X Q||^2`` over calibration inputs ``X [n, fan_in]``. With the
Hessian ``H = 2 X^T X / n`` (plus ``percdamp`` times its mean diagonal), it quantizes the input
rows of ``W [fan_in, fan_out]`` in order and spreads each row's error over the rows not yet
quantized through the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``)::

    err = (W[i] - Q[i]) / U[i, i];   W[i + 1:] -= outer(U[i, i + 1:], err)

Each group of ``group_size`` rows takes its scale ``max |W| / qmax`` per output from the
error-updated rows when the group starts, so the result is the same :class:`QuantArray` as round
to nearest's (with ``H`` the identity it *is* round to nearest). Inputs that never fire (a zero
diagonal) get zero weights, as in the paper's reference code.

The statistics come from the model's own forward pass: :func:`collect_hessians` swaps the target
weights for :class:`~llmzoo.layers.probe.Probe` leaves, which report ``X^T X`` of their inputs to
a host-side :class:`Hessians`. :func:`gptq_params` quantizes one stacked layer at a time, each
from the inputs that the layers before it, already quantized, produce (the reference's order).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.compress.quant import quant_paths
from llmzoo.config import QuantConfig
from llmzoo.layers import lora
from llmzoo.layers.probe import probe
from llmzoo.layers.quant import QMAX, QuantArray, n_groups, pack_int4
from llmzoo.params import flatten, unflatten


class Hessians:
    """A probe sink: the sums of ``X^T X`` (float64) and of the rows, per ``(name, index)``.

    Attributes:
        sums: ``{(name, index): [fan_in, fan_in]}``.
        rows: ``{(name, index): n}``.
        calls: ``{(name, index): reports}``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Forgets every sum (the jitted forward that reports here stays compiled)."""
        self.sums, self.rows, self.calls = {}, Counter(), Counter()

    def __call__(self, name: str, index, xtx, *, rows: int) -> None:
        key, xtx = (name, int(index)), np.asarray(xtx, np.float64)
        with self._lock:
            self.sums[key] = self.sums[key] + xtx if key in self.sums else xtx
            self.rows[key] += rows
            self.calls[key] += 1

    def hessian(self, name: str, index: int) -> np.ndarray:
        """``2 X^T X / n`` of matrix ``name``'s slice ``index``: ``[fan_in, fan_in]``."""
        return 2.0 * self.sums[name, index] / self.rows[name, index]


def collect_hessians(
    forward: Callable, params, specs, paths: list[str], batches: Iterable, sink=None
) -> Hessians:
    """Runs ``forward(params, batch)`` over ``batches`` with the matrices at ``paths`` as probes.

    Args:
        forward: the model's forward pass (jit it: the probes' callbacks fire inside).
        params: plain float params.
        specs: their param specs (stacked dims: one index per layer).
        paths: the matrices to probe.
        batches: the calibration batches.
        sink: a :class:`Hessians` to add to (default: a new one).
    """
    sink = Hessians() if sink is None else sink
    flat, flat_specs = flatten(params), flatten(specs)
    for path in paths:
        stack, _ = lora.matrix_layout(flat_specs[path])
        flat[path] = probe(flat[path], name=path, sink=sink, stack=stack)
    probed = unflatten(flat)
    for batch in batches:
        jax.block_until_ready(forward(probed, batch))
    jax.effects_barrier()
    return sink


def gptq_matrix(
    w, h, *, bits: int, group_size: int | None = None, percdamp: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of one matrix ``w [fan_in, fan_out]`` against the Hessian ``h [fan_in, fan_in]``.

    Returns:
        ``(q, scales)``: int8 ``[fan_in, fan_out]`` in ``[-qmax, qmax]`` and float32
        ``[G, fan_out]``, G groups of rows as :func:`llmzoo.layers.quant.n_groups` cuts them.
    """
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    fan_in, qmax = w.shape[0], QMAX[bits]
    size = fan_in // n_groups(fan_in, group_size)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(fan_in)] += percdamp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    q = np.zeros(w.shape, np.int8)
    scales = np.zeros((fan_in // size, w.shape[1]), np.float32)
    for i in range(fan_in):
        if i % size == 0:  # float32, as XLA computes round to nearest's (times 1 / qmax)
            scale = np.abs(w[i : i + size].astype(np.float32)).max(0) * np.float32(1 / qmax)
            scales[i // size] = scale
            safe = np.where(scale > 0, scale, np.float32(1.0))
        q[i] = np.clip(np.round(w[i].astype(np.float32) / safe), -qmax, qmax)
        err = (w[i] - q[i] * scale.astype(np.float64)) / u[i, i]
        w[i + 1 :] -= np.outer(u[i, i + 1 :], err)
    return q, scales


def dequantized(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``scale * q`` (float32) of :func:`gptq_matrix`'s result: ``[fan_in, fan_out]``."""
    g = scales.shape[0]
    return (q.reshape(g, -1, q.shape[1]).astype(np.float32) * scales[:, None]).reshape(q.shape)


def as_quant_array(q: np.ndarray, scales: np.ndarray, shape, *, bits, n_in, stack, dtype):
    """A :class:`QuantArray` of the weight ``shape [*S, I..., O...]`` from the integers
    ``q [prod(S), fan_in, fan_out]`` and scales ``[prod(S), G, fan_out]``."""
    lead, outs = shape[:stack], shape[stack + n_in :]
    values = jnp.asarray(q.reshape(shape))
    if bits == 4:
        values = pack_int4(values, stack + n_in - 1)
    return QuantArray(
        values,
        jnp.asarray(scales.reshape(*lead, scales.shape[1], *outs)),
        bits=bits,
        n_in=n_in,
        n_out=len(outs),
        float_dtype=jnp.dtype(dtype).name,
    )


def gptq_params(
    params, specs, qcfg: QuantConfig, forward: Callable, batches: list, *, percdamp: float = 0.01
):
    """``params`` with every target matrix of ``qcfg`` a GPTQ-quantized :class:`QuantArray`.

    Stacked layer ``l`` is calibrated on the inputs of a forward pass whose layers before ``l``
    hold their quantized (dequantized) weights: one pass over ``batches`` per layer.

    Args:
        params: plain float params.
        specs: their param specs.
        qcfg: the method (int8 per output channel, int4 per group) and the targets.
        forward: ``forward(params, batch)``, the model's jitted forward pass.
        batches: the calibration batches.
        percdamp: the damping, a fraction of the Hessian's mean diagonal.
    """
    bits = 8 if qcfg.method == "int8" else 4
    group = qcfg.group_size if bits == 4 else None
    flat, flat_specs = flatten(params), flatten(specs)
    paths = quant_paths(specs, qcfg)
    layout = {p: lora.matrix_layout(flat_specs[p]) for p in paths}
    mats, out = {}, {p: ([], []) for p in paths}
    for p, (stack, n_in) in layout.items():
        shape = flat[p].shape
        fan_in = math.prod(shape[stack : stack + n_in])
        mats[p] = np.array(flat[p], np.float32).reshape(math.prod(shape[:stack]), fan_in, -1)
    sink = Hessians()
    for layer in range(max(len(m) for m in mats.values())):
        sink.clear()
        current = {p: jnp.asarray(m.reshape(flat[p].shape), flat[p].dtype) for p, m in mats.items()}
        collect_hessians(forward, unflatten({**flat, **current}), specs, paths, batches, sink)
        for p in (p for p in paths if layer < len(mats[p])):
            q, s = gptq_matrix(
                mats[p][layer], sink.hessian(p, layer), bits=bits, group_size=group,
                percdamp=percdamp,
            )  # fmt: skip
            mats[p][layer] = dequantized(q, s)
            out[p][0].append(q)
            out[p][1].append(s)
    for p, (stack, n_in) in layout.items():
        q, s = np.stack(out[p][0]), np.stack(out[p][1])
        flat[p] = as_quant_array(
            q, s, flat[p].shape, bits=bits, n_in=n_in, stack=stack, dtype=flat[p].dtype
        )
    return unflatten(flat)


__all__ = [
    "Hessians",
    "collect_hessians",
    "gptq_matrix",
    "dequantized",
    "as_quant_array",
    "gptq_params",
]
