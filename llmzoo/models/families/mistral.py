"""Mistral (Jiang et al., 2023): Llama with sliding-window attention (each token sees the last W).

Presets: ``mistral-tiny`` (window 16, for tests), ``mistral-7b-v0.1`` (window 4096),
``mistral-7b-v0.3`` (no window, 32768 vocab). Plain data: presets of kind ``decoder``.
"""

import dataclasses

from llmzoo.models.decoder import DecoderConfig
from llmzoo.models.families.llama import LLAMA
from llmzoo.models.families.shapes import tiny

MISTRAL = dataclasses.replace(
    LLAMA, family="mistral", n_kv_heads=8, d_ff=14336, max_seq_len=32768, sliding_window=4096
)
PRESETS: dict[str, DecoderConfig] = {}
PRESETS["mistral-tiny"] = tiny(MISTRAL, sliding_window=16)
PRESETS["mistral-7b-v0.1"] = MISTRAL
PRESETS["mistral-7b-v0.3"] = dataclasses.replace(
    MISTRAL, vocab_size=32768, sliding_window=None, rope_theta=1e6
)
