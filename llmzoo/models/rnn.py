"""Kind ``rnn``: recurrent language models, a stack of LSTM or GRU layers between an embedding
and an LM head (tied or untied), in the style of Zaremba et al. (2014), "Recurrent neural network
regularization" (dropout on the non-recurrent connections only).

Training and evaluation scan each layer over time with ``lax.scan``
(:func:`llmzoo.layers.recurrent.scan_layer`) and the layers with another ``lax.scan``, as the
decoder does. Generation carries the recurrent state as the cache: its size is ``[L, B, H]`` per
state array whatever the length, and one decoded token costs the same at any position.

Param tree (layers stacked on a leading axis L; G = 4 gates for the LSTM, 3 for the GRU)::

    embed/table [V, D]
    layers/{w_ih [D, G, D], w_hh [D, G, D], b_ih [G, D], b_hh [G, D]}
    lm_head/w [D, V]          (untied embeddings only)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.config import ModelConfig, check_range
from llmzoo.errors import ConfigError
from llmzoo.layers import heads, recurrent
from llmzoo.layers.remat import layer_loop
from llmzoo.layers.residual import dropout
from llmzoo.layers.state import reset_mask
from llmzoo.layers.state import select_rows as select_cache
from llmzoo.models import capture as capture_lib
from llmzoo.params import ParamSpec, init_params, normal, stack, with_dtype
from llmzoo.sharding import constrain, take_rows

ACT_AXES = ("batch", "seq", "embed")
CAPTURES = capture_lib.RECURRENT


@dataclasses.dataclass(frozen=True, kw_only=True)
class RnnConfig(ModelConfig):
    """A recurrent language model (kind ``rnn``).

    The shared fields are documented on :class:`llmzoo.config.ModelConfig`. ``max_seq_len`` is
    no hard limit here (there is no position table): it bounds prompt + generated tokens only.

    Attributes:
        family: ``rnn``.
        cell: ``lstm`` (``torch.nn.LSTM``'s cell) or ``gru`` (``torch.nn.GRU``'s).
        d_model: D, the embedding width and the hidden size of every layer.
        n_layers: number of stacked recurrent layers L.
        tie_embeddings: the LM head is the transposed embedding table.
        init_std: std of the embedding table and the untied head (the cells draw from
            U(-1/sqrt(D), 1/sqrt(D)) as PyTorch does).
    """

    FAMILIES = ("rnn",)
    CELLS = tuple(recurrent.GATES)

    kind: str = "rnn"
    family: str = "rnn"
    cell: str = "lstm"
    d_model: int = 512
    n_layers: int = 2
    tie_embeddings: bool = True
    init_std: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.cell not in self.CELLS:
            raise ConfigError(f"model.cell={self.cell!r} is unknown; use {' or '.join(self.CELLS)}")
        for key in ("d_model", "n_layers"):
            check_range(f"model.{key}", getattr(self, key), lo=1)


def param_specs(cfg: RnnConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    d, v = cfg.d_model, cfg.vocab_size
    specs = {
        "embed": {
            "table": ParamSpec((v, d), logical_axes=("vocab", "embed"), init=normal(cfg.init_std))
        },
        "layers": stack(recurrent.cell_specs(cfg.cell, d, d), cfg.n_layers),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = {
            "w": ParamSpec((d, v), logical_axes=("embed", "vocab"), init=normal(cfg.init_std))
        }
    return with_dtype(specs, cfg.param_dtype)


def init(key: jax.Array, cfg: RnnConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


def _embed(params, tokens, cfg, rng):
    """Token embeddings. ``tokens: [B, T]`` -> ``[B, T, D]``."""
    x = take_rows(params["embed"]["table"].astype(cfg.compute_dtype), tokens)
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _logits(params, x, cfg, dtype=jnp.float32):
    """The LM head. ``x: [B, T, D]`` -> ``[B, T, V]`` in ``dtype``."""
    return heads.lm_head(params, x, tied=cfg.tie_embeddings, dtype=dtype)


def _layers(params, x, state, reset, cfg, rng, capture=(), patch=None):
    """The layer stack (``lax.scan`` over L). ``x: [B, T, D]``, ``state``: tuple of
    ``[L, B, D]``; ``capture`` and ``patch`` (sliced per layer) as in :func:`apply`. Returns
    ``(x [B, T, D], (final state, captured))``."""
    all_states = "state" in capture

    def body(x, layer):
        p, s, i, patch_i = layer
        taps = capture_lib.layer_taps(capture, patch_i)
        h, s = recurrent.scan_layer(p, x, s, cell=cfg.cell, reset=reset, all_states=all_states)
        if all_states:  # the state after every token: [B, T, 2 (h, c) or 1 (h), D]
            taps("state", jnp.stack(s, axis=2))
            s = tuple(a[:, -1] for a in s)
        layer_rng = None if rng is None else jax.random.fold_in(rng, i + 1)
        h = dropout(h.astype(cfg.compute_dtype), cfg.dropout, layer_rng)
        return taps("residual", constrain(h, ACT_AXES)), (s, taps.captured)

    xs = (params["layers"], state, jnp.arange(cfg.n_layers), patch or {})
    return layer_loop(body, x, xs, policy=cfg.remat, scan=cfg.scan_layers)


def _zero_states(cfg, batch_size):
    """The stack's initial state: a tuple of ``[L, B, D]`` float32 zeros."""
    return tuple(
        jnp.zeros((cfg.n_layers, batch_size, cfg.d_model), jnp.float32)
        for _ in range(recurrent.STATES[cfg.cell])
    )


def apply(
    params: dict,
    batch: dict,
    *,
    cfg: RnnConfig,
    rng: jax.Array | None = None,
    capture: tuple[str, ...] = (),
    patch: dict | None = None,
) -> dict:
    """Runs the model on full sequences (training and evaluation).

    Args:
        params: the param tree of :func:`param_specs`.
        batch: ``tokens [B, T]`` int ids; optional ``positions [B, T]`` and ``segment_ids [B, T]``
            (packed rows: the state restarts from zero at each document, see
            :func:`llmzoo.layers.state.reset_mask`).
        cfg: the model config.
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        capture: names of intermediates to return (static; :data:`CAPTURES`); ``()`` compiles
            the same program as without it. ``residual [L + 1, B, T, D]``: row 0 the
            embeddings, row l + 1 layer l's output (the last row is what the LM head reads);
            ``state [L, B, T, S, D]`` float32: each layer's state after each token, S = 2
            ``(h, c)`` for the LSTM, S = 1 ``(h,)`` for the GRU (its last step is the state
            :func:`apply_cached` returns).
        patch: ``{'residual': (values [L + 1, B, T, D], where [L + 1, B, T])}``: activation
            patching, as in :func:`llmzoo.models.decoder.apply`.

    Returns:
        ``{'logits': [B, T, V]}`` in the compute dtype; ``'captured'``: ``{name: array}`` if
        ``capture``.

    Raises:
        ConfigError: a ``capture`` or ``patch`` name the kind does not have (``attn_probs``).
    """
    capture = capture_lib.check_capture("rnn", capture, patch, CAPTURES)
    tokens = batch["tokens"]
    b, t = tokens.shape
    reset = reset_mask((b, t), batch.get("positions"), batch.get("segment_ids"))
    x = _embed(params, tokens, cfg, None if rng is None else jax.random.fold_in(rng, 0))
    x, layer_patch = capture_lib.enter(x, patch)
    x0 = x
    state = _zero_states(cfg, b)
    x, (_, captured) = _layers(params, x, state, reset, cfg, rng, capture, layer_patch)
    out = {"logits": _logits(params, x, cfg, cfg.compute_dtype)}
    if capture:
        out["captured"] = capture_lib.gather(x0, captured, capture)
    return out


def init_cache(params: dict, batch: dict, *, cfg: RnnConfig, max_len: int) -> dict:
    """The zero state for the ``batch`` of prompts.

    Args:
        params: unused (the protocol passes them).
        batch: the prompt batch; only the batch size B of ``tokens [B, P]`` is read.
        cfg: the model config.
        max_len: unused: the state's size does not depend on the length.

    Returns:
        ``{'state': (h, c)}`` (LSTM) or ``{'state': (h,)}`` (GRU), each ``[L, B, D]`` float32.
    """
    del params, max_len
    return {"state": _zero_states(cfg, batch["tokens"].shape[0])}


def apply_cached(
    params: dict, tokens: jax.Array, cache: dict, *, cfg: RnnConfig, positions: jax.Array
) -> tuple[jax.Array, dict]:
    """Runs T new tokens from the cached state (prefill with T = prompt length, decode with T = 1).

    Args:
        params: the param tree.
        tokens: ``[B, T]`` new tokens.
        cache: from :func:`init_cache` or a previous call.
        cfg: the model config.
        positions: ``[B, T]`` their positions; the state restarts at position 0, and (left)
            padding, position -1, leaves it at zero.

    Returns:
        ``(logits [B, T, V] float32, updated cache)``.
    """
    reset = reset_mask(tokens.shape, positions, None)
    x = _embed(params, tokens, cfg, None)
    x, (state, _) = _layers(params, x, cache["state"], reset, cfg, None)
    return _logits(params, x, cfg), {"state": state}


__all__ = [
    "RnnConfig",
    "param_specs",
    "init",
    "apply",
    "init_cache",
    "apply_cached",
    "select_cache",
]
