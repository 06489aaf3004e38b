"""Shared preset shapes: the test-sized version of any family preset."""

from __future__ import annotations

import dataclasses


def tiny(cfg, **changes):
    """The test-sized version of a decoder family preset (V=512, D=64, L=2, N=4, K=2, F=176,
    T=256); ``changes`` override any field."""
    shape = dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176, max_seq_len=256
    )
    return dataclasses.replace(cfg, **{**shape, **changes})
