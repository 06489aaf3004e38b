"""llmzoo: language-model architectures as pure JAX functions over plain pytrees.

The public API, re-exported::

    import llmzoo
    cfg = llmzoo.get_model_preset("gpt2-tiny")
    params = llmzoo.decoder.init(jax.random.key(0), cfg)
    logits = llmzoo.decoder.apply(params, tokens, cfg=cfg)      # [B, T, V]
"""

from llmzoo.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    resolve_train_config,
)
from llmzoo.errors import CheckpointError, ConfigError, DataError, GenerationError, LlmzooError
from llmzoo.layers.positional import RopeScaling
from llmzoo.models import decoder
from llmzoo.params import ParamSpec, abstract_params, init_params, param_count
from llmzoo.presets import get_model_preset, get_train_preset

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "GenerationError",
    "LlmzooError",
    "ModelConfig",
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
    "param_count",
    "resolve_train_config",
]
