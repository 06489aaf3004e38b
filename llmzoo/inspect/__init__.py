"""Seeing inside a model: the logit lens, attention maps and head scores, activation patching,
and a tiny attention-only model trained to grow induction heads.

Pure functions over params (layer 4: imports config, layers and models). They run on the kind
``decoder``; a kind without the activation a tool needs raises :class:`~llmzoo.errors.ConfigError`.
"""

from llmzoo.inspect import heads, induction, lens, patching

__all__ = ["heads", "induction", "lens", "patching"]
