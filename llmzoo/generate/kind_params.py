"""Params laid out for a decoding loop, through a kind's optional ``decode_params``."""

from __future__ import annotations

from llmzoo.config import ModelConfig
from llmzoo.models import registry


def decode_params(params: dict, cfg: ModelConfig) -> dict:
    """``params`` as the kind's ``decode_params`` lays them out for ``apply_cached``, if it has one.

    Called once inside a jitted decoding function, before its loop: the decoder splits its
    stacked layers there, so that the loop reads each weight in place instead of copying a slice
    of the stack on every token.
    """
    prepare = getattr(registry.get(cfg.kind), "decode_params", None)
    return params if prepare is None else prepare(params, cfg=cfg)


__all__ = ["decode_params"]
