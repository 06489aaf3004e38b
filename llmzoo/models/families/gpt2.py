"""GPT-2 (Radford et al., 2019): learned positions, pre-LN blocks, GELU-tanh MLP, tied embeddings.

Presets ``gpt2-tiny``, ``gpt2-small`` (124M), ``gpt2-medium`` (355M), ``gpt2-large`` (774M) and
``gpt2-xl`` (1.5B). Plain data: presets of kind ``decoder``.
"""

import dataclasses

from llmzoo.models.decoder import DecoderConfig

GPT2 = DecoderConfig(family="gpt2", vocab_size=50257, max_seq_len=1024)
PRESETS: dict[str, DecoderConfig] = {
    "gpt2-tiny": dataclasses.replace(
        GPT2, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128
    ),
    "gpt2-small": GPT2,
    "gpt2-medium": dataclasses.replace(GPT2, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "gpt2-large": dataclasses.replace(GPT2, d_model=1280, n_layers=36, n_heads=20, d_ff=5120),
    "gpt2-xl": dataclasses.replace(GPT2, d_model=1600, n_layers=48, n_heads=25, d_ff=6400),
}
