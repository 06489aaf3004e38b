"""Shared pieces of the Hugging Face name maps: entries, layouts, RoPE, activations.

Hugging Face names live here and nowhere else in llmzoo. Each family gives

* ``config_from_hf(hf: dict) -> DecoderConfig`` and ``config_to_hf(cfg) -> dict`` (``config.json``);
* ``entries(cfg) -> list[Entry]``: one :class:`Entry` per Hugging Face tensor, naming the llmzoo
  leaves it holds, its shape, and the two layout transforms.

Layouts: a ``torch.nn.Linear`` weight is ``[out, in]``; llmzoo keeps ``[in, out]`` with heads split
out (``wq [D, N, H]``, ``wo [N, H, D]``). GPT-2's ``Conv1D`` is already ``[in, out]`` and fuses
q, k, v side by side; GPT-NeoX fuses them per head (``[N, 3, H]`` rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from llmzoo.config import RopeScaling
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.models.decoder import DecoderConfig


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Hugging Face tensor and the llmzoo leaves it maps to.

    Attributes:
        name: the Hugging Face name; ``{i}`` marks a per-layer tensor (llmzoo leaves are then
            stacked on a leading L axis and each layer maps to one slice).
        leaves: llmzoo leaf paths (``'layers/attn/wq'``) held by this tensor.
        shape: the Hugging Face shape (of one layer).
        load: ``hf_array -> tuple of llmzoo arrays`` (one per leaf, one layer's slice).
        save: ``*llmzoo_arrays -> hf_array``.
        fallback: a tensor of the same layout that loading reads when ``name`` is absent (a
            tied copy a checkpoint may leave out, e.g. T5's ``lm_head.weight``).
    """

    name: str
    leaves: tuple[str, ...]
    shape: tuple[int, ...]
    load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    save: Callable[..., np.ndarray]
    fallback: str | None = None


def transpose(w: np.ndarray, rows: int = 32) -> np.ndarray:
    """A C-contiguous ``w.T`` of a 2-D array, copied in blocks of rows (a single strided copy of
    a large matrix misses the cache on every element and is about 4x slower)."""
    out = np.empty(w.shape[::-1], w.dtype)
    for start in range(0, w.shape[0], rows):
        out[:, start : start + rows] = w[start : start + rows].T
    return out


def reshape(name, leaf, hf_shape, shape) -> Entry:
    """Same data, different shape (norms, biases, embeddings)."""
    return Entry(
        name, (leaf,), tuple(hf_shape), lambda w: (w.reshape(shape),), lambda x: x.reshape(hf_shape)
    )


def linear_in(name, leaf, d_in, out_shape) -> Entry:
    """``nn.Linear`` weight ``[prod(out), in]`` <-> llmzoo ``[in, *out]``."""
    n_out = int(np.prod(out_shape))
    return Entry(
        name,
        (leaf,),
        (n_out, d_in),
        lambda w: (transpose(w).reshape(d_in, *out_shape),),
        lambda x: transpose(x.reshape(d_in, n_out)),
    )


def linear_out(name, leaf, in_shape, d_out) -> Entry:
    """``nn.Linear`` weight ``[out, prod(in)]`` <-> llmzoo ``[*in, out]``."""
    n_in = int(np.prod(in_shape))
    return Entry(
        name,
        (leaf,),
        (d_out, n_in),
        lambda w: (transpose(w).reshape(*in_shape, d_out),),
        lambda x: transpose(x.reshape(n_in, d_out)),
    )


# ---------------------------------------------------------------------------------------------
# RoPE and activations


def rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None, dict]:
    """Reads ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4.x).

    Returns ``(theta, scaling, parameters)``.
    """
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None, params
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(params["factor"])), params
    orig = params.get("original_max_position_embeddings") or hf.get(
        "original_max_position_embeddings", hf.get("max_position_embeddings")
    )
    if kind == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(orig),
        )
        return theta, scaling, params
    if kind == "yarn":
        factor = params.get("factor") or hf["max_position_embeddings"] / orig

        def opt(key):
            return None if params.get(key) is None else float(params[key])

        scaling = RopeScaling(
            kind="yarn",
            factor=float(factor),
            original_max_position_embeddings=int(orig),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=opt("attention_factor"),
            mscale=opt("mscale"),
            mscale_all_dim=opt("mscale_all_dim"),
            truncate=bool(params.get("truncate", True)),
        )
        return theta, scaling, params
    raise CheckpointError(
        f"rope_type {kind!r} in config.json is not supported (dynamic and longrope depend on the "
        "sequence length); llmzoo supports default, linear, yarn and llama3"
    )


def rope_to_hf(cfg: DecoderConfig) -> dict:
    out = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    s = cfg.rope_scaling
    if s is None:
        return out
    if s.kind == "linear":
        return {**out, "rope_type": "linear", "factor": s.factor}
    if s.kind == "llama3":
        return {
            **out,
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    if s.kind == "yarn":
        out = {
            **out,
            "rope_type": "yarn",
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
            "beta_fast": s.beta_fast,
            "beta_slow": s.beta_slow,
            "truncate": s.truncate,
        }
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(s, key) is not None:
                out[key] = getattr(s, key)
        return out
    raise ConfigError(
        f"model.rope_scaling.kind={s.kind!r} has no Hugging Face equivalent; "
        "use linear, yarn or llama3 to export"
    )


# Hugging Face activation name -> llmzoo MLP kind, for plain and gated MLPs.
PLAIN_ACTS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
GATED_ACTS = {
    "silu": "swiglu",
    "gelu_pytorch_tanh": "geglu",
    "gelu_new": "geglu",
    "gelu": "geglu_exact",
}
PLAIN_ACTS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
GATED_ACTS_TO_HF = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "geglu_exact": "gelu"}


def act_from_hf(table: dict, name: str, model_type: str) -> str:
    if name not in table:
        raise CheckpointError(
            f"{model_type} activation {name!r} in config.json is not supported; "
            f"llmzoo maps {', '.join(table)}"
        )
    return table[name]


def act_to_hf(table: dict, kind: str, family: str) -> str:
    if kind not in table:
        raise ConfigError(
            f"model.mlp={kind!r} has no Hugging Face {family} equivalent; use one of "
            f"{', '.join(table)}"
        )
    return table[kind]


# Hugging Face architecture class per family.
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "bloom": "BloomForCausalLM",
}
