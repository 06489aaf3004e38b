"""Model families. Every decoder family is a set of presets of :mod:`llmzoo.models.decoder`."""

from llmzoo.models import decoder, gpt2  # noqa: F401

__all__ = ["decoder", "gpt2"]
