"""Qwen2 (Yang et al., 2024): Llama with biases on the q, k, v projections (none on o).

Presets: ``qwen2-tiny`` (tests), ``qwen2-0.5b`` and ``qwen2-1.5b`` (tied embeddings),
``qwen2-7b``. Published Qwen2 checkpoints do not use their sliding window (``use_sliding_window``
is false), so none is set. Plain data: presets of kind ``decoder``.
"""

import dataclasses

from llmzoo.models.decoder import DecoderConfig
from llmzoo.models.families.llama import LLAMA
from llmzoo.models.families.shapes import tiny

QWEN2 = dataclasses.replace(
    LLAMA,
    family="qwen2",
    vocab_size=151936,
    d_model=896,
    n_layers=24,
    n_heads=14,
    n_kv_heads=2,
    d_ff=4864,
    max_seq_len=32768,
    rope_theta=1e6,
    norm_eps=1e-6,
    qkv_bias=True,
    tie_embeddings=True,
)
PRESETS: dict[str, DecoderConfig] = {}
PRESETS["qwen2-tiny"] = tiny(QWEN2)
PRESETS["qwen2-0.5b"] = QWEN2
PRESETS["qwen2-1.5b"] = dataclasses.replace(
    QWEN2, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, d_ff=8960
)
PRESETS["qwen2-7b"] = dataclasses.replace(
    QWEN2,
    vocab_size=152064,
    d_model=3584,
    n_layers=28,
    n_heads=28,
    n_kv_heads=4,
    d_ff=18944,
    tie_embeddings=False,
)
