"""LoRA as a transform of the param tree (Hu et al. 2021, "LoRA: Low-Rank Adaptation").

Adapters mirror the params: for each target matrix ``w [*S, I..., O...]`` (S the stacked
``layers`` axis, if any) they hold ``{'a': [*S, I..., R], 'b': [*S, R, O...]}`` at the same path.
:func:`apply_adapters` turns each target into a :class:`~llmzoo.layers.linear.LoraWeight` leaf,
which the layers' one matmul helper (:func:`llmzoo.layers.linear.einsum`) multiplies through
without merging; :func:`merge` folds the adapters into plain weights. ``a`` starts as PEFT's
Kaiming-uniform draw and ``b`` at zero, so the adapted model starts equal to its base.

Training form (:func:`trainable_params`, :func:`wrap_loss`): what is trained is
``{'adapters': ..., 'full': ...}`` (``full``: params matching ``LoraConfig.trainable``, trained
whole); the frozen base is every param. Dimensions: R rank, I input dims, O output dims.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from llmzoo.config import LoraConfig, TrainConfig
from llmzoo.errors import ConfigError
from llmzoo.layers.linear import LoraWeight
from llmzoo.params import (
    ParamSpec,
    fit_params,
    flatten,
    fresh_init_key,
    init_params,
    is_spec,
    unflatten,
    zeros,
)

# Top-level params the models multiply without the helper (LM, score and value heads): they can
# be trained in full (``lora.trainable``) but get no adapters.
NOT_ADAPTABLE = ("lm_head", "score", "value_head")
# Model kinds whose layers route every weight matmul through the helper.
KINDS = ("decoder", "encoder", "seq2seq")
_DROPOUT_SALT = 0x4C6F5241  # adapter keys (init, dropout) drawn apart from the model's own


def matches(patterns, path: str) -> bool:
    """Whether a pattern fully matches ``path`` or a trailing part of it after a ``/``."""
    parts = path.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    return any(re.fullmatch(p, tail) for p in patterns for tail in tails)


def matrix_layout(spec: ParamSpec) -> tuple[int, int]:
    """``(S, n_in)``: the stacked leading dims and the input dims of a weight matrix
    (two for the attention output ``[N, H, D]``, whose inputs are the heads, else one)."""
    axes = spec.logical_axes or (None,) * len(spec.shape)
    stack = 0
    while stack < len(axes) and axes[stack] == "layers":
        stack += 1
    return stack, 2 if axes[stack + 1 : stack + 2] == ("head_dim",) else 1


def adaptable(specs) -> dict[str, ParamSpec]:
    """The weight matrices the layers multiply through the helper: ``{path: spec}``."""
    out = {}
    for path, spec in flatten(specs).items():
        name, top = path.rsplit("/", 1)[-1], path.split("/", 1)[0]
        stack, _ = matrix_layout(spec)
        if re.fullmatch(r"w|w[qkvo]|w_\w+", name) and top not in NOT_ADAPTABLE:
            if len(spec.shape) - stack >= 2:
                out[path] = spec
    return out


def target_paths(specs, cfg: LoraConfig) -> list[str]:
    """The paths of the matrices ``cfg.targets`` selects.

    Raises:
        ConfigError: a pattern that matches no adaptable matrix (naming some that exist).
    """
    candidates = adaptable(specs)
    for pattern in cfg.targets:
        if not any(matches([pattern], p) for p in candidates):
            some = ", ".join(list(candidates)[:8])
            raise ConfigError(
                f"lora.targets pattern {pattern!r} matches no weight matrix; adaptable paths "
                f"include {some}"
            )
    return [p for p in candidates if matches(cfg.targets, p)]


@dataclasses.dataclass(frozen=True)
class _KaimingUniform:
    """PEFT's init of A: ``kaiming_uniform(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    fan_in: int

    def __call__(self, key, shape, dtype):
        bound = 1.0 / math.sqrt(self.fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def adapter_specs(specs, cfg: LoraConfig) -> dict:
    """ParamSpecs of the adapters of ``specs`` (a model's param specs): ``{path: {a, b}}``
    nested like the params, with logical axes taken from each base matrix (so the adapters
    shard like it; the rank axis is replicated)."""
    out = {}
    for path in target_paths(specs, cfg):
        s = flatten(specs)[path]
        stack, n_in = matrix_layout(s)
        axes = s.logical_axes or (None,) * len(s.shape)
        cut = stack + n_in
        fan_in = math.prod(s.shape[stack:cut])
        out[f"{path}/a"] = ParamSpec(
            (*s.shape[:cut], cfg.rank), s.dtype, (*axes[:cut], None), _KaimingUniform(fan_in)
        )
        out[f"{path}/b"] = ParamSpec(
            (*s.shape[:stack], cfg.rank, *s.shape[cut:]),
            s.dtype,
            (*axes[:stack], None, *axes[cut:]),
            zeros,
        )
    return unflatten(out)


def shardings_like(adapter_tree, base) -> Any:
    """Shardings for adapters (specs or arrays) that follow their base weights' in ``base``:
    ``a [*S, I..., R]`` takes the base's stacked and input-dim axes, ``b [*S, R, O...]`` its
    stacked and output-dim axes; the rank axis is replicated."""
    flat_base, out = flatten(base), {}
    for target, ab in _targets(adapter_tree).items():
        w, a, b = flat_base[target], ab["a"], ab["b"]
        if not isinstance(w.sharding, NamedSharding):
            out[f"{target}/a"] = out[f"{target}/b"] = w.sharding
            continue
        spec = (*w.sharding.spec, *(None,) * (w.ndim - len(w.sharding.spec)))
        stack, cut = _stack_dims(w, a, b), len(a.shape) - 1
        mesh = w.sharding.mesh
        out[f"{target}/a"] = NamedSharding(mesh, PartitionSpec(*spec[:cut], None))
        out[f"{target}/b"] = NamedSharding(mesh, PartitionSpec(*spec[:stack], None, *spec[cut:]))
    return unflatten(out)


def init_adapters(key: jax.Array, specs, cfg: LoraConfig, base=None) -> dict:
    """Fresh adapters for the model declared by ``specs``: A Kaiming-uniform, B zero.

    Args:
        key: PRNG key (each leaf folds in its path, as :func:`llmzoo.params.init_params`).
        specs: the model's param specs.
        cfg: the LoRA config.
        base: the model's params; the adapters are then laid out like their base weights.
    """
    a_specs = adapter_specs(specs, cfg)
    shardings = None if base is None else shardings_like(a_specs, base)
    return init_params(key, a_specs, shardings)


def _stack_dims(w, a, b) -> int:
    """S, the stacked leading dims shared by ``w``, ``a`` and ``b``."""
    return len(a.shape) + len(b.shape) - 2 - len(w.shape)


def apply_adapters(base, adapters, cfg: LoraConfig, rng: jax.Array | None = None):
    """``base`` with each adapted weight replaced by a :class:`LoraWeight`.

    Args:
        base: the params.
        adapters: from :func:`init_adapters` (or trained).
        cfg: the LoRA config (scale ``alpha / rank``, dropout).
        rng: enables adapter dropout (each weight folds in its path; stacked weights get one key
            per layer); None for evaluation.
    """
    flat = flatten(base)
    for path, ab in _targets(adapters).items():
        w, a, b = flat[path], ab["a"], ab["b"]
        key = None
        if rng is not None and cfg.dropout > 0:
            key = jax.random.fold_in(rng, zlib.crc32(path.encode()) & 0x7FFFFFFF)
            stack = w.shape[: _stack_dims(w, a, b)]
            key = jax.random.split(key, stack) if stack else key
        flat[path] = LoraWeight(w, a, b, key, scale=cfg.alpha / cfg.rank, dropout=cfg.dropout)
    return unflatten(flat)


def merge(base, adapters, cfg: LoraConfig):
    """Plain params: ``w + alpha / rank * a @ b`` at every adapted weight."""
    params = apply_adapters(base, adapters, cfg)
    return jax.tree.map(
        lambda x: x.merged() if isinstance(x, LoraWeight) else x,
        params,
        is_leaf=lambda x: isinstance(x, LoraWeight),
    )


def _targets(adapters) -> dict[str, dict]:
    """``{target path: {'a': .., 'b': ..}}`` from the nested adapters."""
    out: dict[str, dict] = {}
    for path, leaf in flatten(adapters).items():
        target, part = path.rsplit("/", 1)
        out.setdefault(target, {})[part] = leaf
    return out


def full_paths(params, cfg: LoraConfig) -> list[str]:
    """Paths of the params trained in full (``cfg.trainable``), never an adapted one."""
    return [p for p in flatten(params) if matches(cfg.trainable, p)]


def trainable_params(key: jax.Array, specs, params, cfg: LoraConfig) -> dict:
    """What a LoRA run trains: ``{'adapters': ..., 'full': ...}`` (``full``, copies of the
    params matching ``cfg.trainable``, is left out when there are none)."""
    adapted = set(target_paths(specs, cfg))
    flat = flatten(params)
    full = {p: jnp.copy(flat[p]) for p in full_paths(params, cfg) if p not in adapted}
    out = {"adapters": init_adapters(key, specs, cfg, params)}
    return out | ({"full": unflatten(full)} if full else {})


def combine(base, trainable: dict, cfg: LoraConfig, rng: jax.Array | None = None):
    """The params a LoRA run computes with: ``base`` with the ``full`` params of ``trainable``
    put in and its adapters applied (as :class:`LoraWeight` leaves)."""
    flat = flatten(base) | flatten(trainable.get("full", {}))
    return apply_adapters(unflatten(flat), trainable["adapters"], cfg, rng)


def merged_params(base, trainable: dict, cfg: LoraConfig):
    """Plain params of a LoRA run (:func:`combine`, with the adapters merged)."""
    flat = flatten(base) | flatten(trainable.get("full", {}))
    return merge(unflatten(flat), trainable["adapters"], cfg)


def trainable_abstract(specs, cfg: LoraConfig, base) -> dict:
    """ShapeDtypeStructs (with shardings following ``base``) of :func:`trainable_params`, to
    restore a LoRA run's checkpoint."""
    a_specs = adapter_specs(specs, cfg)
    shards = shardings_like(a_specs, base)
    as_struct = lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh)  # noqa: E731
    out = {"adapters": jax.tree.map(as_struct, a_specs, shards, is_leaf=is_spec)}
    adapted, flat = set(target_paths(specs, cfg)), flatten(base)
    full = {
        p: jax.ShapeDtypeStruct(flat[p].shape, flat[p].dtype, sharding=flat[p].sharding)
        for p in full_paths(base, cfg)
        if p not in adapted
    }
    return out | ({"full": unflatten(full)} if full else {})


def run_base(cfg: TrainConfig, specs, source, shardings=None):
    """The frozen base of a LoRA run from its ``init_from`` params ``source``, as training built
    it: params the run's model lacks are dropped, and those ``source`` lacks (a new head) are
    drawn as the training loop draws fresh params; placed by ``shardings`` if given."""
    return fit_params(specs, source, fresh_init_key(cfg.seed), shardings)[0]


def wrap_loss(loss: Callable, cfg: LoraConfig, reference: Callable | None = None) -> Callable:
    """A loss over ``(trainable, batch, rng, *, cfg, frozen=base)`` from a loss over params.

    Args:
        loss: ``loss(params, batch, rng, *, cfg[, frozen])``.
        cfg: the LoRA config.
        reference: ``reference(base) -> frozen`` for a loss that reads frozen params (DPO's
            reference model): it gets the base with the adapters off, as in PEFT.
    """
    wrapped = functools.partial(_lora_loss, loss=loss, lora=cfg, reference=reference)
    wrapped.uses_rng = cfg.dropout > 0  # the train step draws a key for the adapters' dropout
    return wrapped


def _lora_loss(trainable, batch, rng, *, cfg, frozen, loss, lora, reference):
    dropout_rng = None if rng is None else jax.random.fold_in(rng, _DROPOUT_SALT)
    params = combine(frozen, trainable, lora, dropout_rng)
    if reference is None:
        return loss(params, batch, rng, cfg=cfg)
    return loss(params, batch, rng, cfg=cfg, frozen=reference(frozen))


def training_form(cfg: TrainConfig, specs, params, loss: Callable, reference=None) -> tuple:
    """``(trainable, frozen, loss)`` of a LoRA run (``cfg.lora`` set) over the model's params.

    Args:
        cfg: the run's config.
        specs: the model's param specs.
        params: the model's params (from ``init_from``): the frozen base.
        loss: the objective's loss over params.
        reference: ``reference(base) -> frozen`` for an objective that splits off frozen params
            (see :func:`wrap_loss`).

    Raises:
        ConfigError: a model kind whose layers do not take adapters, or a target that matches
            nothing.
    """
    if cfg.model.kind not in KINDS:
        raise ConfigError(
            f"lora needs a model whose weights go through llmzoo.layers.linear ({', '.join(KINDS)}"
            f"), not model.kind={cfg.model.kind!r}; drop lora to train all params"
        )
    key = jax.random.fold_in(jax.random.key(cfg.seed), _DROPOUT_SALT)
    trainable = trainable_params(key, specs, params, cfg.lora)
    return trainable, params, wrap_loss(loss, cfg.lora, reference)
