"""GPT-NeoX (Black et al., 2022) and Pythia (Biderman et al., 2023): LayerNorm, RoPE on a quarter
of each head (partial rotary), parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``, exact GELU,
untied output embedding.

Presets: ``gpt_neox-tiny`` (tests), ``pythia-70m`` ... ``pythia-12b``, ``gpt-neox-20b``. The
presets are plain data of kind ``decoder``.
"""

import dataclasses

from llmzoo.models.decoder import DecoderConfig

PYTHIA = DecoderConfig(
    family="gpt_neox",
    vocab_size=50304,
    d_model=512,
    n_layers=6,
    n_heads=8,
    d_ff=2048,
    max_seq_len=2048,
    position="rope",
    rope_theta=10000.0,
    rope_fraction=0.25,
    norm="layernorm",
    norm_eps=1e-5,
    mlp="gelu",
    parallel_residual=True,
    tie_embeddings=False,
)
PRESETS: dict[str, DecoderConfig] = {}
PRESETS["gpt_neox-tiny"] = dataclasses.replace(
    PYTHIA, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=256
)
for _name, (_d, _l, _n) in {
    "pythia-70m": (512, 6, 8),
    "pythia-160m": (768, 12, 12),
    "pythia-410m": (1024, 24, 16),
    "pythia-1b": (2048, 16, 8),
    "pythia-1.4b": (2048, 24, 16),
    "pythia-2.8b": (2560, 32, 32),
    "pythia-6.9b": (4096, 32, 32),
    "pythia-12b": (5120, 36, 40),
}.items():
    PRESETS[_name] = dataclasses.replace(PYTHIA, d_model=_d, n_layers=_l, n_heads=_n, d_ff=4 * _d)
PRESETS["gpt-neox-20b"] = dataclasses.replace(
    PYTHIA, vocab_size=50432, d_model=6144, n_layers=44, n_heads=64, d_ff=24576
)
