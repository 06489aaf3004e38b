"""Named presets, the source of truth for configs, and the resolution of a run's config.

Model presets are collected from the family modules in :mod:`llmzoo.models.families`
(``get_model_preset('gpt2-small')`` returns a :class:`~llmzoo.models.decoder.DecoderConfig`).
Training presets bundle a model with data, objective and schedule. :func:`resolve_train_config`
applies a YAML file and ``key=value`` overrides on top, with ``model.kind`` and ``model.preset``
selecting the model's config class.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmzoo.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from llmzoo.config_io import apply_overrides, load_yaml, merge, parse_cli_overrides
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.models.decoder import DecoderConfig
from llmzoo.models.families import (
    albert,
    bart,
    bert,
    bloom,
    deberta_v2,
    gemma,
    gpt2,
    gpt_neox,
    llama,
    longformer,
    mamba,
    mistral,
    qwen2,
    rnn,
    roberta,
    rwkv,
    t5,
)

FAMILY_MODULES = (gpt2, llama, mistral, qwen2, gemma, gpt_neox, t5, bart)
FAMILY_MODULES += (bert, roberta, albert, deberta_v2, rnn)
FAMILY_MODULES += (bloom,)
FAMILY_MODULES += (mamba,)
FAMILY_MODULES += (rwkv,)
FAMILY_MODULES += (longformer,)
MODEL_PRESETS: dict[str, ModelConfig] = {k: v for m in FAMILY_MODULES for k, v in m.PRESETS.items()}


def get_model_preset(name: str) -> ModelConfig:
    """Returns the model preset ``name``; the error lists the known ones."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}"
        ) from None


# Training presets. `tiny` is what `make train` runs on 2 CPU cores in a few minutes.
_TINY_MODEL = DecoderConfig(
    family="gpt2", vocab_size=2048, d_model=192, n_layers=4, n_heads=6, d_ff=768, max_seq_len=256
)
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        model=_TINY_MODEL,
        data=DataConfig(),
        optim=OptimConfig(lr=2e-3, warmup_steps=50, weight_decay=0.1),
        run_dir="runs/tiny",
        steps=600,
        batch_size=16,
        seq_len=128,
        eval_every=200,
        eval_batches=16,
        ckpt_every=200,
    ),
    "small": TrainConfig(
        model=dataclasses.replace(gpt2.GPT2, vocab_size=2048),
        optim=OptimConfig(lr=6e-4, warmup_steps=200),
        run_dir="runs/small",
        steps=5000,
        batch_size=32,
        seq_len=512,
    ),
    "medium": TrainConfig(
        model=dataclasses.replace(MODEL_PRESETS["gpt2-medium"], vocab_size=2048),
        optim=OptimConfig(lr=3e-4, warmup_steps=500),
        run_dir="runs/medium",
        steps=20000,
        batch_size=64,
        seq_len=1024,
    ),
}


def get_train_preset(name: str) -> TrainConfig:
    """Returns the training preset ``name``; the error lists the known ones."""
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown training preset {name!r}; known: {', '.join(sorted(TRAIN_PRESETS))}"
        ) from None


def choose_model(current: ModelConfig, overrides: dict, name: str) -> tuple[ModelConfig, dict]:
    """Picks the model config that the ``model`` section's other keys apply to.

    ``preset: NAME`` starts from that model preset; ``kind: K`` (when it differs from the
    current kind) starts from the defaults of kind K's config class.
    """
    if "preset" in overrides:
        current = get_model_preset(overrides.pop("preset"))
    kind = overrides.pop("kind", current.kind)
    if not isinstance(kind, str):
        raise ConfigError(f"config key '{name}.kind' expects str, got {kind!r}")
    if kind != current.kind:
        current = registry.config_class(kind)()
    return current, overrides


CHOOSERS = {"model": choose_model}


def resolve_train_config(
    config_file: str | None = None,
    overrides: list[str] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Builds a TrainConfig: preset (or ``base``), then a YAML file, then CLI overrides.

    A top-level ``preset: NAME`` key in the YAML or CLI picks a training preset (default
    ``tiny``).
    """
    data = load_yaml(config_file) if config_file else {}
    data = merge(data, parse_cli_overrides(list(overrides)))
    cfg = base
    if "preset" in data:
        cfg = get_train_preset(data.pop("preset"))
    if cfg is None:
        cfg = get_train_preset("tiny")
    return apply_overrides(cfg, data, choosers=CHOOSERS)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuilds a TrainConfig from :func:`llmzoo.config_io.to_dict` output (a run's config.yaml)."""
    return apply_overrides(get_train_preset("tiny"), data, choosers=CHOOSERS)


# The objective a model kind is pretrained with by default.
DEFAULT_OBJECTIVES = {
    "decoder": "causal_lm",
    "encoder": "mlm",
    "seq2seq": "span_corruption",
    "rnn": "causal_lm",
    "mamba": "causal_lm",
    "rwkv": "causal_lm",
}


def train_config_for(model: ModelConfig, base: str = "tiny") -> TrainConfig:
    """Training preset ``base`` with ``model``, the default objective of its kind, and a
    sequence length that fits the model."""
    cfg = get_train_preset(base)
    name = DEFAULT_OBJECTIVES.get(model.kind, "causal_lm")
    return dataclasses.replace(
        cfg,
        model=model,
        objective=dataclasses.replace(cfg.objective, name=name),
        seq_len=min(cfg.seq_len, model.max_seq_len),
    )
