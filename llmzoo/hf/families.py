"""Per-family maps between Hugging Face checkpoints and llmzoo: config keys and tensor names.

Hugging Face names live here and nowhere else in llmzoo. Each family gives

* ``config_from_hf(hf: dict) -> ModelConfig`` and ``config_to_hf(cfg) -> dict`` (``config.json``);
* ``entries(cfg) -> list[Entry]``: one :class:`Entry` per Hugging Face tensor, naming the llmzoo
  leaves it holds, its shape, and the two layout transforms.

Layouts: a ``torch.nn.Linear`` weight is ``[out, in]``; llmzoo keeps ``[in, out]`` with heads split
out (``wq [D, N, H]``, ``wo [N, H, D]``). GPT-2's ``Conv1D`` is already ``[in, out]`` and fuses
q, k, v side by side; GPT-NeoX fuses them per head (``[N, 3, H]`` rows).
"""

from __future__ import annotations

import dataclasses

from llmzoo.config import ModelConfig
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.hf_common import Entry
from llmzoo.hf.hf_gpt import (
    _gpt2_entries,
    _gpt2_from_hf,
    _gpt2_to_hf,
    _gpt_neox_entries,
    _gpt_neox_from_hf,
    _gpt_neox_to_hf,
)
from llmzoo.hf.hf_llama import _llama_like_entries, _llama_like_from_hf, _llama_like_to_hf

# ---------------------------------------------------------------------------------------------
# Dispatch

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox")
# The base-model prefix that checkpoints saved from a bare base model (e.g. GPT2Model) omit.
BASE_PREFIX = {
    "gpt2": "transformer.",
    "llama": "model.",
    "mistral": "model.",
    "qwen2": "model.",
    "gemma": "model.",
    "gpt_neox": "gpt_neox.",
}
# Buffers some checkpoints store that carry no weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "attention.bias", "attention.masked_bias")
IGNORED_SUFFIXES += ("rotary_emb.inv_freq",)


def _check_family(model_type) -> None:
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"model_type {model_type!r} in config.json is not supported; "
            f"llmzoo converts {', '.join(FAMILIES)}"
        )


def config_from_hf(hf: dict) -> ModelConfig:
    """Builds the llmzoo config of a Hugging Face ``config.json`` dict."""
    model_type = hf.get("model_type")
    _check_family(model_type)
    try:
        if model_type == "gpt2":
            return _gpt2_from_hf(hf)
        if model_type == "gpt_neox":
            return _gpt_neox_from_hf(hf)
        return _llama_like_from_hf(hf)
    except KeyError as e:
        raise CheckpointError(
            f"{model_type} config.json lacks key {e.args[0]!r}; re-save it with transformers"
        ) from None


# Fields that do not change what a checkpoint computes at inference.
_TRAINING_ONLY = ("dropout", "init_std", "dtype", "remat")


def _canonical(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(
        cfg,
        n_kv_heads=cfg.kv_heads,
        head_dim=cfg.dim_per_head,
        rope_theta=cfg.rope_theta if cfg.position == "rope" else 0.0,
        rope_fraction=cfg.rope_fraction if cfg.position == "rope" else 1.0,
        rope_scaling=cfg.rope_scaling if cfg.position == "rope" else None,
        norm_bias=cfg.norm_bias if cfg.norm == "layernorm" else False,
        **{k: getattr(ModelConfig(), k) for k in _TRAINING_ONLY},
    )


def config_to_hf(cfg: ModelConfig) -> dict:
    """The Hugging Face ``config.json`` dict of an llmzoo config.

    Raises:
        ConfigError: the config uses a switch its family's Hugging Face model lacks (e.g. a
            sliding window on Llama); the message names the field.
    """
    try:
        _check_family(cfg.family)
    except CheckpointError as e:
        raise ConfigError(str(e).replace("in config.json ", "")) from None
    if cfg.family == "gpt2":
        hf = _gpt2_to_hf(cfg)
    elif cfg.family == "gpt_neox":
        hf = _gpt_neox_to_hf(cfg)
    else:
        hf = _llama_like_to_hf(cfg)
    back = _canonical(config_from_hf(hf))
    want = _canonical(cfg)
    for field in dataclasses.fields(ModelConfig):
        a, b = getattr(want, field.name), getattr(back, field.name)
        if a != b:
            raise ConfigError(
                f"model.{field.name}={a!r} cannot be expressed in a Hugging Face {cfg.family} "
                f"checkpoint (it would load as {b!r}); change it or pick another family"
            )
    return hf


def entries(cfg: ModelConfig) -> list[Entry]:
    """The tensor map of ``cfg``'s family."""
    if cfg.family == "gpt2":
        return _gpt2_entries(cfg)
    if cfg.family == "gpt_neox":
        return _gpt_neox_entries(cfg)
    return _llama_like_entries(cfg)
