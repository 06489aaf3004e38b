"""The rules of the training configs' fields, in one table: allowed ranges and choices by dotted
key, checked when a config is built (:func:`check_rules`), so a bad value is a one-line
:class:`~llmzoo.errors.ConfigError` that names the key."""

from __future__ import annotations

import dataclasses

from llmzoo.errors import ConfigError


def check_range(
    name: str, value, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False
) -> None:
    """Raises a ConfigError naming ``name`` when ``value`` is outside ``[lo, hi]``.

    ``lo_open``/``hi_open`` exclude the bound itself.
    """
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "" if lo is None else ("(" if lo_open else "[") + f"{lo}"
        right = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
        want = f"in {left or '(-inf'}, {right or 'inf)'}"
        raise ConfigError(f"{name}={value!r} is out of range; use a value {want}")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: ``[lo, hi]``, either bound open or absent."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False


# The named sharding strategies (their meshes are in llmzoo.sharding, which checks they agree).
STRATEGIES = ("dp", "fsdp", "tp", "fsdp+tp")

_OPEN_UNIT = Range(0.0, 1.0, lo_open=True, hi_open=True)
_POSITIVE = Range(0.0, lo_open=True)

# The rules of the training configs, in one place: dotted key -> allowed range or choices.
# Cross-field rules (warmup <= steps, batch divisible by grad_accum ...) are in
# TrainConfig.__post_init__; each model kind's config checks its own fields.
RULES: dict[str, Range | tuple[str, ...]] = {
    "data.vocab_size": Range(lo=16),
    "data.tokenizer_type": ("bpe", "unigram"),
    "data.txt_documents": ("file", "paragraph"),
    "data.eval_fraction": _OPEN_UNIT,
    "data.shards": Range(lo=0),
    "optim.lr": _POSITIVE,
    "optim.min_lr_ratio": Range(0.0, 1.0),
    "optim.warmup_steps": Range(lo=0),
    "optim.b1": Range(0.0, 1.0, hi_open=True),
    "optim.b2": Range(0.0, 1.0, hi_open=True),
    "optim.eps": _POSITIVE,
    "optim.weight_decay": Range(lo=0.0),
    "optim.clip_norm": _POSITIVE,
    "objective.mask_prob": _OPEN_UNIT,
    "objective.noise_density": _OPEN_UNIT,
    "objective.mask_ratio": _OPEN_UNIT,
    "objective.mean_span_length": Range(lo=1.0),
    "objective.poisson_lambda": _POSITIVE,
    "objective.beta": _POSITIVE,
    "objective.preference_loss": ("sigmoid", "ipo", "simpo"),
    "objective.simpo_gamma": Range(lo=0.0),
    "objective.kl_coef": Range(lo=0.0),
    "objective.kl_target": _POSITIVE,
    "objective.clip_eps": _OPEN_UNIT,
    "objective.vf_coef": Range(lo=0.0),
    "objective.gamma": Range(0.0, 1.0),
    "objective.lam": Range(0.0, 1.0),
    "objective.group_size": Range(lo=2),
    "objective.temperature": _POSITIVE,
    **{
        f"objective.{key}": Range(lo=1)
        for key in ("kl_horizon", "ppo_epochs", "minibatches", "rollout_tokens")
    },
    **{
        key: Range(lo=1)
        for key in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_batches")
    },
    **{
        key: Range(lo=1) for key in ("ckpt_every", "keep_checkpoints", "log_every", "sample_tokens")
    },
    **{key: Range(lo=-1) for key in ("mesh_data", "mesh_fsdp", "mesh_tensor")},
    "strategy": STRATEGIES,
    "seed": Range(lo=0),
    "on_nan": ("stop", "skip_step"),
    "lora.rank": Range(lo=1),
    "lora.alpha": _POSITIVE,
    "lora.dropout": Range(0.0, 1.0, hi_open=True),
    "quant.method": ("int8", "int4"),
    "quant.group_size": Range(lo=1),
    "quant.calibration": ("none", "gptq"),
    "quant.calibration_batches": Range(lo=1),
    "prune.sparsity": Range(0.0, 1.0, hi_open=True),
    "prune.scope": ("global", "layer"),
    "objective.kd_temperature": _POSITIVE,
    "objective.kd_weight": Range(0.0, 1.0),
    "objective.hidden_weight": Range(lo=0.0),
}


def check_rules(cfg, prefix: str = "") -> None:
    """Checks every field of ``cfg`` named in :data:`RULES` (under ``prefix``).

    Raises:
        ConfigError: naming the first key whose value breaks its rule, and the allowed values.
    """
    for field in dataclasses.fields(cfg):
        name = f"{prefix}{field.name}"
        rule, value = RULES.get(name), getattr(cfg, field.name)
        if value is None:  # an optional field left unset
            continue
        if isinstance(rule, Range):
            check_range(
                name, value, lo=rule.lo, hi=rule.hi, lo_open=rule.lo_open, hi_open=rule.hi_open
            )
        elif rule is not None and value not in rule:
            raise ConfigError(f"{name}={value!r} is unknown; use one of {', '.join(rule)}")
