"""Errors raised by llmzoo.

Every error names the offending value and says how to fix it, in one line. The CLI prints
``error: <message>`` and exits with status 2 for any :class:`LlmzooError`.
"""


class LlmzooError(Exception):
    """Base class for all user-facing llmzoo errors."""


class ConfigError(LlmzooError, ValueError):
    """A config key is unknown, has the wrong type, or holds an inconsistent value."""


class DataError(LlmzooError, ValueError):
    """A dataset, tokenizer or input is missing or unusable."""


class CheckpointError(LlmzooError, ValueError):
    """A checkpoint or weight file is missing, corrupt, or does not match the model."""


class GenerationError(LlmzooError, ValueError):
    """A generation request cannot be served (e.g. the prompt is longer than the context)."""
