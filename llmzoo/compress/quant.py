"""Weight-only quantization of a param tree (round to nearest; :mod:`llmzoo.layers.quant`).

:func:`quantize_params` replaces each target matrix of :class:`~llmzoo.config.QuantConfig` by a
:class:`~llmzoo.layers.quant.QuantArray` (int8: one scale per output channel; int4: one per
``group_size`` input rows), which the layers multiply through
:func:`llmzoo.layers.linear.einsum`; everything else (embeddings, norms, biases, heads) is kept.
:func:`quantized_abstract` is the tree a quantized run's checkpoint is restored into, and
:func:`param_bytes` what a tree occupies as stored.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from llmzoo.config import QuantConfig
from llmzoo.errors import ConfigError
from llmzoo.layers import lora
from llmzoo.layers.quant import QuantArray, quantize, storage_bytes
from llmzoo.params import abstract_params, flatten, unflatten


def is_quant(x: Any) -> bool:
    """Whether ``x`` is a :class:`QuantArray` (an ``is_leaf`` for ``jax.tree`` functions)."""
    return isinstance(x, QuantArray)


def check_kind(kind: str) -> None:
    """Raises unless model kind ``kind`` multiplies its matrices through the layers' helper.

    Raises:
        ConfigError: a kind outside :data:`llmzoo.layers.lora.KINDS`.
    """
    if kind not in lora.KINDS:
        raise ConfigError(
            f"quantization needs a model whose weights go through llmzoo.layers.linear "
            f"({', '.join(lora.KINDS)}), not model.kind={kind!r}"
        )


def quant_paths(specs, qcfg: QuantConfig) -> list[str]:
    """The paths of the matrices ``qcfg.targets`` selects among ``specs``' weight matrices.

    Raises:
        ConfigError: a pattern that matches no weight matrix (naming some that exist).
    """
    candidates = lora.adaptable(specs)
    for pattern in qcfg.targets:
        if not any(lora.matches([pattern], p) for p in candidates):
            some = ", ".join(list(candidates)[:8]) or "none"
            raise ConfigError(
                f"quant.targets pattern {pattern!r} matches no weight matrix; the matrices "
                f"include {some}"
            )
    return [p for p in candidates if lora.matches(qcfg.targets, p)]


_quantize = jax.jit(quantize, static_argnames=("bits", "group_size", "n_in", "stack"))


def _quantizer(spec, qcfg: QuantConfig, path: str):
    """``w -> QuantArray`` for the matrix declared by ``spec`` at ``path``."""
    stack, n_in = lora.matrix_layout(spec)
    bits = 8 if qcfg.method == "int8" else 4
    group = qcfg.group_size if bits == 4 else None
    if bits == 4 and spec.shape[stack + n_in - 1] % 2:
        raise ConfigError(
            f"quant.method=int4 packs two weights a byte along the input of {path} "
            f"{tuple(spec.shape)}, whose last input dim is odd; use int8 or leave it out of "
            "quant.targets"
        )
    return functools.partial(_quantize, bits=bits, group_size=group, n_in=n_in, stack=stack)


def quantize_params(params, specs, qcfg: QuantConfig):
    """``params`` with every target matrix of ``qcfg`` a :class:`QuantArray`.

    Args:
        params: plain params (a LoRA run's merged params, for one).
        specs: the model's param specs (their logical axes tell stacked and input dims).
        qcfg: the method (int8 per output channel, int4 per group) and the targets.

    Raises:
        ConfigError: a target pattern matching nothing, an int4 matrix it cannot pack, or a
            quantized one.
    """
    flat, flat_specs = flatten(params), flatten(specs)
    for path in quant_paths(specs, qcfg):
        if is_quant(flat[path]):
            raise ConfigError(f"{path} is quantized already; quantize float params")
        flat[path] = _quantizer(flat_specs[path], qcfg, path)(flat[path])
    return unflatten(flat)


def dequantize_params(params):
    """``params`` with every :class:`QuantArray` back as a float array of its original dtype
    (``scale * q``: the quantization error stays); a plain tree is returned as it is."""
    return jax.tree.map(lambda x: x.dequantize() if is_quant(x) else x, params, is_leaf=is_quant)


def _sharding_of(sharding, shape, keep) -> Any:
    """``sharding`` for an array of ``shape`` whose dims come from the base's dims ``keep``
    (None: a new, replicated dim); a dim its mesh axes do not divide is replicated."""
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = (*sharding.spec, *(None,) * (len(keep) - len(sharding.spec)))
    mesh, axes = sharding.mesh, []
    for size, k in zip(shape, keep, strict=True):
        names = None if k is None else spec[k]
        n = 1
        for a in (names,) if isinstance(names, str) else names or ():
            n *= mesh.shape[a]
        axes.append(names if size % n == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*axes))


def _struct(a, sharding, keep) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=_sharding_of(sharding, a.shape, keep))


def quantized_abstract(specs, qcfg: QuantConfig, shardings=None):
    """The abstract params of a quantized run (``jax.ShapeDtypeStruct`` leaves, and
    :class:`QuantArray` ones of them at the targets), to restore its checkpoint into.

    Args:
        specs: the model's param specs.
        qcfg: the run's ``quant`` config.
        shardings: a tree of shardings for the plain params (default: the first device); values
            take their matrix's, scales its stacked and output dims' (groups replicated).
    """
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    flat_shard = {} if shardings is None else flatten(shardings)
    flat, flat_specs = flatten(abstract_params(specs)), flatten(specs)
    out = {
        p: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=flat_shard.get(p, one))
        for p, a in flat.items()
    }
    for path in quant_paths(specs, qcfg):
        base = out[path]
        q = jax.eval_shape(_quantizer(flat_specs[path], qcfg, path), base)
        s = q.stack
        value_dims = list(range(len(base.shape)))
        scale_dims = [*range(s), None, *range(s + q.n_in, len(base.shape))]
        out[path] = dataclasses.replace(
            q,
            values=_struct(q.values, base.sharding, value_dims),
            scales=_struct(q.scales, base.sharding, scale_dims),
        )
    return unflatten(out)


def param_bytes(params, paths=None) -> int:
    """The bytes ``params`` occupy as stored (packed int4 at half a byte a weight, scales
    included); arrays or ``jax.ShapeDtypeStruct`` leaves alike.

    Args:
        params: a param tree, plain or quantized.
        paths: count only these (flattened, ``/``-joined) paths; None counts every leaf.
    """
    flat = flatten(params)
    leaves = flat.values() if paths is None else (flat[p] for p in paths)
    total = 0
    for leaf in leaves:
        total += sum(storage_bytes(x) for x in jax.tree.leaves(leaf, is_leaf=is_quant))
    return total


__all__ = [
    "is_quant",
    "check_kind",
    "quant_paths",
    "quantize_params",
    "dequantize_params",
    "quantized_abstract",
    "param_bytes",
]
