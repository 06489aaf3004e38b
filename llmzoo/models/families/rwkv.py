"""RWKV-4 language models (kind ``rwkv``).

Presets ``rwkv-tiny`` (test-sized: V=512, D=64, L=2) and ``rwkv-4-169m``, the shape of
``RWKV/rwkv-4-169m-pile`` (V=50277, D=768, L=12, halving the residual stream every 6 blocks at
inference as its ``config.json`` does). Plain data: presets of kind ``rwkv``.
"""

from llmzoo.models.rwkv import RwkvConfig

PRESETS: dict[str, RwkvConfig] = {
    "rwkv-tiny": RwkvConfig(vocab_size=512, d_model=64, n_layers=2, max_seq_len=256),
    "rwkv-4-169m": RwkvConfig(
        vocab_size=50277, d_model=768, n_layers=12, max_seq_len=1024, rescale_every=6
    ),
}
