"""GPT-2 (Radford et al., 2019): learned positions, pre-LN blocks, GELU-tanh MLP, tied embeddings.

Presets ``gpt2-tiny``, ``gpt2-small`` (124M), ``gpt2-medium`` (355M), ``gpt2-large``,
``gpt2-xl`` are registered in :mod:`llmzoo.presets`; the computation is
:mod:`llmzoo.models.decoder` with those switches.
"""

from llmzoo.models.decoder import apply, apply_cached, init, init_cache, param_specs

__all__ = ["param_specs", "init", "apply", "apply_cached", "init_cache"]
