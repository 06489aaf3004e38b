"""llmzoo: language-model architectures as pure JAX functions over plain pytrees.

The public API, re-exported::

    import llmzoo
    cfg = llmzoo.get_model_preset("gpt2-tiny")                   # a frozen DecoderConfig
    kind = llmzoo.models.registry.get(cfg.kind)                  # the kind's module
    params = kind.init(jax.random.key(0), cfg)
    out = kind.apply(params, {"tokens": tokens}, cfg=cfg)        # {'logits': [B, T, V]}
"""

from llmzoo import models
from llmzoo.config import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    RopeScaling,
    TrainConfig,
)
from llmzoo.config_io import apply_overrides
from llmzoo.errors import CheckpointError, ConfigError, DataError, GenerationError, LlmzooError
from llmzoo.models import decoder
from llmzoo.models.decoder import DecoderConfig
from llmzoo.params import ParamSpec, abstract_params, init_params, param_count
from llmzoo.presets import get_model_preset, get_train_preset, resolve_train_config

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DecoderConfig",
    "GenerationError",
    "LlmzooError",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "ParamSpec",
    "RopeScaling",
    "TrainConfig",
    "abstract_params",
    "apply_overrides",
    "decoder",
    "get_model_preset",
    "get_train_preset",
    "init_params",
    "models",
    "param_count",
    "resolve_train_config",
]
