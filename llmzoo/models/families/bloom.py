"""BLOOM (BigScience, 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language Model"):
ALiBi instead of position embeddings, a LayerNorm on the embeddings, pre-LN blocks with biases,
q/k/v fused per head, a GELU-tanh MLP of width 4 D, tied embeddings.

Presets: ``bloom-tiny`` (tests), ``bloom-560m``, ``bloom-1b1``, ``bloom-1b7``, ``bloom-3b``,
``bloom-7b1`` and ``bloom`` (176B). Plain data: presets of kind ``decoder``.
"""

import dataclasses

from llmzoo.models.decoder import DecoderConfig

BLOOM = DecoderConfig(
    family="bloom",
    vocab_size=250880,
    max_seq_len=2048,
    position="alibi",
    norm="layernorm",
    norm_eps=1e-5,
    mlp="gelu_tanh",
    embed_norm=True,
    tie_embeddings=True,
)
PRESETS: dict[str, DecoderConfig] = {
    "bloom-tiny": dataclasses.replace(
        BLOOM, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128
    ),
}
for _name, (_d, _l, _n) in {
    "bloom-560m": (1024, 24, 16),
    "bloom-1b1": (1536, 24, 16),
    "bloom-1b7": (2048, 24, 16),
    "bloom-3b": (2560, 30, 32),
    "bloom-7b1": (4096, 30, 32),
    "bloom": (14336, 70, 112),
}.items():
    PRESETS[_name] = dataclasses.replace(BLOOM, d_model=_d, n_layers=_l, n_heads=_n, d_ff=4 * _d)
