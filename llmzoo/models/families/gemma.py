"""Gemma (Gemma Team, 2024): embeddings scaled by sqrt(D), GeGLU (tanh GELU), RMSNorm scaled by
``1 + w``, tied embeddings, head_dim 256 independent of D, multi-query attention at 2B.

Presets: ``gemma-tiny`` (tests), ``gemma-2b``, ``gemma-7b``. Plain data: presets of kind
:mod:`llmzoo.models.decoder`.
"""

import dataclasses

from llmzoo.models.decoder import DecoderConfig
from llmzoo.models.families.llama import LLAMA
from llmzoo.models.families.shapes import tiny

GEMMA = dataclasses.replace(
    LLAMA,
    family="gemma",
    vocab_size=256000,
    d_model=2048,
    n_layers=18,
    n_heads=8,
    n_kv_heads=1,
    head_dim=256,
    d_ff=16384,
    max_seq_len=8192,
    norm_eps=1e-6,
    norm_zero_centered=True,
    mlp="geglu",
    embed_scale=True,
    tie_embeddings=True,
)
PRESETS: dict[str, DecoderConfig] = {}
PRESETS["gemma-tiny"] = tiny(GEMMA, n_kv_heads=1, head_dim=32, d_ff=256)
PRESETS["gemma-2b"] = GEMMA
PRESETS["gemma-7b"] = dataclasses.replace(
    GEMMA, d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, d_ff=24576
)
