"""Hugging Face map for Mamba-1 (``MambaForCausalLM``, model_type ``mamba``)."""

from __future__ import annotations

import dataclasses

from llmzoo.errors import CheckpointError
from llmzoo.hf.hf_common import Entry, linear_in, linear_out, reshape, transpose
from llmzoo.models.mamba import MambaConfig

# Tensors a checkpoint may hold that the map does not read: the tied LM head.
MAMBA_OPTIONAL = ("lm_head.weight",)


def mamba_from_hf(hf: dict) -> MambaConfig:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(
            f"mamba hidden_act {act!r} in config.json is not supported; llmzoo's mixer uses silu"
        )
    d = hf["hidden_size"]
    rank = hf.get("time_step_rank", "auto")
    return MambaConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        state_size=hf.get("state_size", 16),
        expand=hf.get("expand", 2),
        conv_kernel=hf.get("conv_kernel", 4),
        dt_rank=rank if rank == "auto" else int(rank),
        use_bias=bool(hf.get("use_bias", False)),
        use_conv_bias=bool(hf.get("use_conv_bias", True)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dt_min=float(hf.get("time_step_min", 1e-3)),
        dt_max=float(hf.get("time_step_max", 0.1)),
        dt_init_floor=float(hf.get("time_step_floor", 1e-4)),
        init_std=float(hf.get("initializer_range", 0.1)),
        dropout=0.0,
    )


def mamba_to_hf(cfg: MambaConfig) -> dict:
    return {
        "model_type": "mamba",
        "architectures": ["MambaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "state_size": cfg.state_size,
        "expand": cfg.expand,
        "intermediate_size": cfg.d_inner,
        "conv_kernel": cfg.conv_kernel,
        "time_step_rank": cfg.time_step_rank,
        "use_bias": cfg.use_bias,
        "use_conv_bias": cfg.use_conv_bias,
        "hidden_act": "silu",
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "time_step_min": cfg.dt_min,
        "time_step_max": cfg.dt_max,
        "time_step_floor": cfg.dt_init_floor,
        "initializer_range": cfg.init_std,
        "residual_in_fp32": True,
    }


def canonical_mamba(cfg: MambaConfig) -> MambaConfig:
    """``dt_rank`` resolved to an int (``auto`` and ceil(D / 16) describe the same model); the
    scan settings and ``max_seq_len`` (no position table: only a bound on generation, which
    Hugging Face's config does not hold) reset to their defaults."""
    plain = MambaConfig()
    return dataclasses.replace(
        cfg,
        dt_rank=cfg.time_step_rank,
        scan=plain.scan,
        scan_chunk=plain.scan_chunk,
        max_seq_len=plain.max_seq_len,
    )


def mamba_entries(cfg: MambaConfig) -> list[Entry]:
    d, e, z, r, w = cfg.d_model, cfg.d_inner, cfg.state_size, cfg.time_step_rank, cfg.conv_kernel
    p, m = "backbone.layers.{i}.", "layers/mixer/"
    out = [
        reshape("backbone.embeddings.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        reshape(p + "norm.weight", "layers/norm/scale", (d,), (d,)),
        linear_in(p + "mixer.in_proj.weight", m + "in_proj", d, (2, e)),
        Entry(  # [E, 1, W] <-> [W, E]
            p + "mixer.conv1d.weight",
            (m + "conv_w",),
            (e, 1, w),
            lambda x: (transpose(x.reshape(e, w)),),
            lambda x: transpose(x).reshape(e, 1, w),
        ),
        linear_in(p + "mixer.x_proj.weight", m + "x_proj", e, (r + 2 * z,)),
        linear_in(p + "mixer.dt_proj.weight", m + "dt_proj", r, (e,)),
        reshape(p + "mixer.dt_proj.bias", m + "dt_bias", (e,), (e,)),
        reshape(p + "mixer.A_log", m + "A_log", (e, z), (e, z)),
        reshape(p + "mixer.D", m + "skip", (e,), (e,)),
        linear_out(p + "mixer.out_proj.weight", m + "out_proj", (e,), d),
        reshape("backbone.norm_f.weight", "final_norm/scale", (d,), (d,)),
    ]
    if cfg.use_conv_bias:
        out.append(reshape(p + "mixer.conv1d.bias", m + "conv_b", (e,), (e,)))
    if cfg.use_bias:
        out.append(reshape(p + "mixer.in_proj.bias", m + "in_bias", (2 * e,), (2, e)))
        out.append(reshape(p + "mixer.out_proj.bias", m + "out_bias", (d,), (d,)))
    if not cfg.tie_embeddings:
        out.append(linear_in("lm_head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out
