"""Model kinds by name: ``model.kind`` in a config selects one of these modules.

A kind is a module with the protocol below; a family is a preset of a kind (plain data in
:mod:`llmzoo.models.families`). A change of layer choice is a switch on a kind's config; a change
of data flow or outputs is a new kind.

Every kind module provides:

* ``Config``-style frozen dataclass subclassing :class:`llmzoo.config.ModelConfig`, whose ``kind``
  field defaults to the kind's name (``DecoderConfig`` ...);
* ``param_specs(cfg) -> tree of ParamSpec`` and ``init(key, cfg, shardings=None) -> params``;
* ``apply(params, batch, *, cfg, rng=None, ...) -> dict`` of outputs (``'logits'`` ...).

Kinds that generate also provide ``init_cache(params, batch, *, cfg, max_len) -> cache`` (an
opaque pytree), ``apply_cached(params, tokens, cache, *, cfg, positions) -> (logits, cache)`` and
``select_cache(cache, index) -> cache`` (gathers batch rows, for beam search), and may provide
``decode_params(params, *, cfg) -> params``, which decoding calls once before its loop (the
decoder splits its stacked layers there, so each weight is read in place on every token).
"""

from __future__ import annotations

import types

from llmzoo.errors import ConfigError
from llmzoo.models import decoder, encoder, mamba, rnn, rwkv, seq2seq

KINDS: dict[str, types.ModuleType] = {
    "decoder": decoder,
    "encoder": encoder,
    "seq2seq": seq2seq,
    "rnn": rnn,
    "mamba": mamba,
    "rwkv": rwkv,
}
CONFIGS: dict[str, type] = {
    "decoder": decoder.DecoderConfig,
    "encoder": encoder.EncoderConfig,
    "seq2seq": seq2seq.Seq2SeqConfig,
    "rnn": rnn.RnnConfig,
    "mamba": mamba.MambaConfig,
    "rwkv": rwkv.RwkvConfig,
}


def get(kind: str) -> types.ModuleType:
    """The module of model kind ``kind``; the error lists the known kinds."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ConfigError(
            f"model.kind={kind!r} is unknown; use one of {', '.join(sorted(KINDS))}"
        ) from None


def config_class(kind: str) -> type:
    """The config dataclass of model kind ``kind``."""
    get(kind)
    return CONFIGS[kind]


def can_generate(kind: str) -> bool:
    """Whether kind ``kind`` provides the cached-decoding functions."""
    module = get(kind)
    return all(hasattr(module, f) for f in ("init_cache", "apply_cached", "select_cache"))
