"""Model families. Every decoder family is a set of presets of :mod:`llmzoo.models.decoder`."""

from llmzoo.models import decoder, gemma, gpt2, gpt_neox, llama, mistral, qwen2  # noqa: F401

__all__ = ["decoder", "gemma", "gpt2", "gpt_neox", "llama", "mistral", "qwen2"]
