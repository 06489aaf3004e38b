"""Mamba-1 selective state-space language models (kind ``mamba``).

Presets ``mamba-tiny`` (test-sized: V=512, D=64, L=2, Z=16) and ``mamba-130m``, the smallest
checkpoint of Gu & Dao (2023) as published in Hugging Face's layout (``state-spaces/mamba-130m-hf``:
V=50280, D=768, L=24). Plain data: presets of kind ``mamba``.
"""

from llmzoo.models.mamba import MambaConfig

PRESETS: dict[str, MambaConfig] = {
    "mamba-tiny": MambaConfig(vocab_size=512, d_model=64, n_layers=2, max_seq_len=256),
    "mamba-130m": MambaConfig(vocab_size=50280, d_model=768, n_layers=24, max_seq_len=2048),
}
