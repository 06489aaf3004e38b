"""ALBERT (Lan et al., 2020): factorised embeddings (E = 128, projected to D) and one set of layer
params shared by all layers; GELU-tanh.

Presets: ``albert-tiny`` (tests), ``albert-base-v2`` (11.8M with its pooler), ``albert-large-v2``,
``albert-xlarge-v2``, ``albert-xxlarge-v2``. Plain data: presets of kind ``encoder``.
"""

import dataclasses

from llmzoo.models.encoder import EncoderConfig

ALBERT = EncoderConfig(
    family="albert",
    vocab_size=30000,
    max_seq_len=512,
    embed_dim=128,
    share_layers=True,
    mlp="gelu_tanh",
    mlm_activation="gelu_tanh",
)
PRESETS: dict[str, EncoderConfig] = {
    "albert-tiny": dataclasses.replace(
        ALBERT,
        vocab_size=512,
        embed_dim=32,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=256,
        max_seq_len=128,
    ),
    "albert-base-v2": ALBERT,
}
for _name, (_d, _l, _n) in {
    "albert-large-v2": (1024, 24, 16),
    "albert-xlarge-v2": (2048, 24, 16),
    "albert-xxlarge-v2": (4096, 12, 64),
}.items():
    PRESETS[_name] = dataclasses.replace(ALBERT, d_model=_d, n_layers=_l, n_heads=_n, d_ff=4 * _d)
