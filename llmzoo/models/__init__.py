"""Model kinds (one module each) and their registry; family presets live in ``families/``."""

from llmzoo.models import decoder, registry  # noqa: F401

__all__ = ["decoder", "registry"]
