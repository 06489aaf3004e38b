"""Named presets: the source of truth for model and training configs.

Model presets are registered per family; ``get_model_preset('gpt2-small')`` returns a
:class:`~llmzoo.config.ModelConfig`. Training presets bundle a model with data and schedule.
"""

from __future__ import annotations

import dataclasses

from llmzoo.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from llmzoo.errors import ConfigError

MODEL_PRESETS: dict[str, ModelConfig] = {}


def register(name: str, cfg: ModelConfig) -> ModelConfig:
    """Adds a model preset under ``name``."""
    MODEL_PRESETS[name] = cfg
    return cfg


def tiny(cfg: ModelConfig, **changes) -> ModelConfig:
    """The test-sized version of a family preset (V=512, D=64, L=2, N=4, K=2, F=176, T=256)."""
    shape = dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176, max_seq_len=256
    )
    return dataclasses.replace(cfg, **{**shape, **changes})


# GPT-2 (Radford et al., 2019): learned positions, pre-LN, GELU-tanh MLP, tied embeddings.
_GPT2 = ModelConfig(family="gpt2", vocab_size=50257, max_seq_len=1024)
register(
    "gpt2-tiny",
    dataclasses.replace(
        _GPT2,
        vocab_size=512,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=256,
        max_seq_len=128,
    ),
)
register("gpt2-small", _GPT2)  # 124M
register(
    "gpt2-medium",
    dataclasses.replace(_GPT2, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
)  # 355M
register(
    "gpt2-large",
    dataclasses.replace(_GPT2, d_model=1280, n_layers=36, n_heads=20, d_ff=5120),
)  # 774M
register(
    "gpt2-xl",
    dataclasses.replace(_GPT2, d_model=1600, n_layers=48, n_heads=25, d_ff=6400),
)  # 1.5B


def get_model_preset(name: str) -> ModelConfig:
    """Returns the model preset ``name``; the error lists the known ones."""
    _load_family_presets()
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}"
        ) from None


def _load_family_presets() -> None:
    # Families beyond GPT-2 register their presets when their module is imported.
    import llmzoo.models  # noqa: F401


# Training presets. `tiny` is what `make train` runs on 2 CPU cores in a few minutes.
_TINY_MODEL = ModelConfig(
    family="gpt2",
    vocab_size=2048,
    d_model=192,
    n_layers=4,
    n_heads=6,
    d_ff=768,
    max_seq_len=256,
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
        model=dataclasses.replace(_GPT2, vocab_size=2048),
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
