"""Llama (Touvron et al., 2023; Llama 3, 2024): RMSNorm, RoPE, SwiGLU, grouped-query attention.

Presets: ``llama-tiny`` (tests), ``llama2-7b``, ``llama2-13b``, ``llama2-70b``, ``llama3-8b``,
``llama3.1-8b`` (llama3 RoPE scaling), ``llama3.2-1b`` and ``llama3.2-3b`` (tied embeddings).
Plain data: presets of kind ``decoder`` (:mod:`llmzoo.models.decoder`).
"""

import dataclasses

from llmzoo.config import RopeScaling
from llmzoo.models.decoder import DecoderConfig
from llmzoo.models.families.shapes import tiny

LLAMA = DecoderConfig(
    family="llama",
    vocab_size=32000,
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=32,
    d_ff=11008,
    max_seq_len=4096,
    position="rope",
    rope_theta=10000.0,
    norm="rmsnorm",
    norm_eps=1e-5,
    norm_bias=False,
    mlp="swiglu",
    mlp_bias=False,
    qkv_bias=False,
    out_bias=False,
    tie_embeddings=False,
)


def _llama3_scaling(factor: float) -> RopeScaling:
    return RopeScaling(
        kind="llama3",
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )


_LLAMA3 = dataclasses.replace(
    LLAMA, vocab_size=128256, n_kv_heads=8, d_ff=14336, max_seq_len=8192, rope_theta=500000.0
)
PRESETS: dict[str, DecoderConfig] = {}
PRESETS["llama-tiny"] = tiny(LLAMA)
PRESETS["llama2-7b"] = LLAMA
PRESETS["llama2-13b"] = dataclasses.replace(
    LLAMA, d_model=5120, n_layers=40, n_heads=40, n_kv_heads=40, d_ff=13824
)
PRESETS["llama2-70b"] = dataclasses.replace(
    LLAMA, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672
)
PRESETS["llama3-8b"] = _LLAMA3
PRESETS["llama3.1-8b"] = dataclasses.replace(
    _LLAMA3, max_seq_len=131072, rope_scaling=_llama3_scaling(8.0)
)
PRESETS["llama3.2-1b"] = dataclasses.replace(
    _LLAMA3,
    d_model=2048,
    n_layers=16,
    n_heads=32,
    d_ff=8192,
    max_seq_len=131072,
    tie_embeddings=True,
    rope_scaling=_llama3_scaling(32.0),
)
PRESETS["llama3.2-3b"] = dataclasses.replace(
    _LLAMA3,
    d_model=3072,
    n_layers=28,
    n_heads=24,
    d_ff=8192,
    max_seq_len=131072,
    tie_embeddings=True,
    rope_scaling=_llama3_scaling(32.0),
)
