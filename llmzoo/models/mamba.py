"""Kind ``mamba``: the selective state-space language model of Gu & Dao (2023), "Mamba:
linear-time sequence modeling with selective state spaces" (Mamba-1), laid out as Hugging Face's
``MambaForCausalLM``.

Each of the L blocks is ``x + mixer(rms_norm(x))`` (:func:`llmzoo.layers.ssm.mixer`: in
projection, causal depthwise convolution, selective scan, gate, out projection); a final RMSNorm
and the LM head (tied to the embedding by default) follow. Training and evaluation run the
recurrence in parallel (``lax.associative_scan``, or chunks of it: ``model.scan``); generation
carries the convolution window and the SSM state as the cache, whose size does not depend on the
length, and runs the recurrent step.

Dimension letters: L layers, D model width, E = expand * D inner width, Z state size, R the
time-step rank, W the convolution width (see :mod:`llmzoo.layers.ssm`).

Param tree (layers stacked on a leading axis L)::

    embed/table [V, D]
    layers/norm/scale [D]
    layers/mixer/{in_proj [D, 2, E], conv_w [W, E], conv_b [E], x_proj [E, R + 2Z],
                  dt_proj [R, E], dt_bias [E], A_log [E, Z], skip [E], out_proj [E, D]}
                  (+ in_bias [2, E], out_bias [D] with use_bias)
    final_norm/scale [D]
    lm_head/w [D, V]          (untied embeddings only)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from llmzoo.config import ModelConfig, check_range
from llmzoo.errors import ConfigError
from llmzoo.layers import heads, ssm
from llmzoo.layers.norms import norm_specs, rms_norm
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
class MambaConfig(ModelConfig):
    """A Mamba-1 language model (kind ``mamba``); Hugging Face ``MambaConfig`` names in brackets.

    The shared fields are documented on :class:`llmzoo.config.ModelConfig`. ``max_seq_len`` is
    no hard limit (there are no positions): it bounds prompt + generated tokens only.

    Attributes:
        family: ``mamba``.
        d_model: D [hidden_size].
        n_layers: L [num_hidden_layers].
        state_size: Z, the SSM state per channel [state_size].
        expand: E = expand * D, the inner width [expand].
        conv_kernel: W, the causal convolution's width [conv_kernel].
        dt_rank: R, the rank of the time-step projection: ``auto`` (ceil(D / 16)) or an int
            [time_step_rank].
        use_bias: biases on the in and out projections [use_bias].
        use_conv_bias: a bias on the convolution [use_conv_bias].
        norm_eps: the RMSNorms' epsilon [layer_norm_epsilon].
        tie_embeddings: the LM head is the transposed embedding table [tie_word_embeddings].
        dt_min, dt_max: the initial time steps are drawn log-uniformly in this range
            [time_step_min, time_step_max]; dt_init_floor floors them [time_step_floor].
        scan: how full sequences run the recurrence: ``associative`` (``lax.associative_scan``
            over all T) or ``chunked`` (associative within chunks of ``scan_chunk`` steps,
            sequential across them: less memory); same numbers (:mod:`llmzoo.layers.ssm`).
            Generation steps one token at a time.
        scan_chunk: K, the chunk length of the chunked scan.
    """

    FAMILIES = ("mamba",)

    kind: str = "mamba"
    family: str = "mamba"
    d_model: int = 768
    n_layers: int = 24
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    dt_rank: str | int = "auto"
    use_bias: bool = False
    use_conv_bias: bool = True
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    scan: str = "associative"
    scan_chunk: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.scan not in ssm.SCANS:
            raise ConfigError(f"model.scan={self.scan!r} is unknown; use {' or '.join(ssm.SCANS)}")
        for key in ("d_model", "n_layers", "state_size", "expand", "conv_kernel", "scan_chunk"):
            check_range(f"model.{key}", getattr(self, key), lo=1)
        if isinstance(self.dt_rank, str) and self.dt_rank != "auto":
            raise ConfigError(f"model.dt_rank={self.dt_rank!r} is unknown; use auto or an int >= 1")
        if not isinstance(self.dt_rank, str):
            check_range("model.dt_rank", self.dt_rank, lo=1)
        check_range("model.norm_eps", self.norm_eps, lo=0.0)
        check_range("model.dt_min", self.dt_min, lo=0.0, lo_open=True)
        check_range("model.dt_max", self.dt_max, lo=self.dt_min)

    @property
    def d_inner(self) -> int:
        """E = expand * D."""
        return self.expand * self.d_model

    @property
    def time_step_rank(self) -> int:
        """R: ``dt_rank`` with ``auto`` resolved to ceil(D / 16)."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


def param_specs(cfg: MambaConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    d, v = cfg.d_model, cfg.vocab_size
    mixer = ssm.mixer_specs(
        d,
        cfg.d_inner,
        cfg.state_size,
        cfg.time_step_rank,
        cfg.conv_kernel,
        use_bias=cfg.use_bias,
        use_conv_bias=cfg.use_conv_bias,
        dt_range=(cfg.dt_min, cfg.dt_max, cfg.dt_init_floor),
        init_std=cfg.init_std,
    )
    specs = {
        "embed": {
            "table": ParamSpec((v, d), logical_axes=("vocab", "embed"), init=normal(cfg.init_std))
        },
        "layers": stack({"norm": norm_specs(d, "rmsnorm"), "mixer": mixer}, cfg.n_layers),
        "final_norm": norm_specs(d, "rmsnorm"),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = {
            "w": ParamSpec((d, v), logical_axes=("embed", "vocab"), init=normal(cfg.init_std))
        }
    return with_dtype(specs, cfg.param_dtype)


def init(key: jax.Array, cfg: MambaConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


def _embed(params, tokens, cfg, rng):
    """Token embeddings. ``tokens: [B, T]`` -> ``[B, T, D]``."""
    x = take_rows(params["embed"]["table"].astype(cfg.compute_dtype), tokens)
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _logits(params, x, cfg, dtype=jnp.float32):
    """Final RMSNorm and LM head. ``x: [B, T, D]`` -> ``[B, T, V]`` in ``dtype``."""
    x = rms_norm(params["final_norm"], x, eps=cfg.norm_eps)
    return heads.lm_head(params, x, tied=cfg.tie_embeddings, dtype=dtype)


def _layers(params, x, state, reset, cfg, rng, scan=None, capture=(), patch=None):
    """The block stack (``lax.scan`` over L). ``x: [B, T, D]``; ``state``: ``(conv [L, B, W-1,
    E], ssm [L, B, E, Z])``; ``scan`` overrides ``cfg.scan`` (``step``: one token); ``capture``
    and ``patch`` (sliced per layer) as in :func:`apply`. Returns ``(x [B, T, D], (final
    state, captured))``."""
    scan, all_states = scan or cfg.scan, "state" in capture

    def body(x, layer):
        p, s, i, patch_i = layer
        taps = capture_lib.layer_taps(capture, patch_i)
        h = rms_norm(p["norm"], x, eps=cfg.norm_eps)
        h, s = ssm.mixer(
            p["mixer"], h, s, reset, scan=scan, chunk=cfg.scan_chunk, all_states=all_states
        )
        if all_states:  # the SSM state after every token, [B, T, E, Z]
            s = (s[0], taps("state", s[1])[:, -1])
        layer_rng = None if rng is None else jax.random.fold_in(rng, i + 1)
        x = constrain(x + dropout(h, cfg.dropout, layer_rng), ACT_AXES)
        return taps("residual", x), (s, taps.captured)

    xs = (params["layers"], state, jnp.arange(cfg.n_layers), patch or {})
    return layer_loop(body, x, xs, policy=cfg.remat, scan=cfg.scan_layers)


def _zero_states(cfg, batch_size):
    """``(conv [L, B, W - 1, E], ssm [L, B, E, Z])`` float32 zeros."""
    one = ssm.zero_state(batch_size, cfg.d_inner, cfg.state_size, cfg.conv_kernel)
    return tuple(jnp.broadcast_to(s, (cfg.n_layers, *s.shape)) for s in one)


def apply(
    params: dict,
    batch: dict,
    *,
    cfg: MambaConfig,
    rng: jax.Array | None = None,
    capture: tuple[str, ...] = (),
    patch: dict | None = None,
) -> dict:
    """Runs the model on full sequences (training and evaluation).

    Args:
        params: the param tree of :func:`param_specs`.
        batch: ``tokens [B, T]`` int ids; optional ``positions [B, T]`` and ``segment_ids [B, T]``
            (packed rows: state and convolution window restart at each document, see
            :func:`llmzoo.layers.state.reset_mask`).
        cfg: the model config.
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        capture: names of intermediates to return (static; :data:`CAPTURES`); ``()`` compiles
            the same program as without it. ``residual [L + 1, B, T, D]``: row 0 the
            embeddings, row l + 1 block l's output (the last row is the stream before the
            final norm); ``state [L, B, T, E, Z]`` float32: each layer's SSM state after each
            token (its last step is the ``ssm`` cache of :func:`apply_cached`; the convolution
            window, the last W - 1 inputs, is not included). It holds L T E Z floats per row
            (``expand * D * state_size`` per token and layer): meant for short inputs.
        patch: ``{'residual': (values [L + 1, B, T, D], where [L + 1, B, T])}``: activation
            patching, as in :func:`llmzoo.models.decoder.apply`.

    Returns:
        ``{'logits': [B, T, V]}`` in the compute dtype; ``'captured'``: ``{name: array}`` if
        ``capture``.

    Raises:
        ConfigError: a ``capture`` or ``patch`` name the kind does not have (``attn_probs``).
    """
    capture = capture_lib.check_capture("mamba", capture, patch, CAPTURES)
    tokens = batch["tokens"]
    b, t = tokens.shape
    reset = reset_mask((b, t), batch.get("positions"), batch.get("segment_ids"))
    x = _embed(params, tokens, cfg, None if rng is None else jax.random.fold_in(rng, 0))
    x, layer_patch = capture_lib.enter(x, patch)
    x0 = x
    state = _zero_states(cfg, b)
    x, (_, captured) = _layers(params, x, state, reset, cfg, rng, None, capture, layer_patch)
    out = {"logits": _logits(params, x, cfg, cfg.compute_dtype)}
    if capture:
        out["captured"] = capture_lib.gather(x0, captured, capture)
    return out


def init_cache(params: dict, batch: dict, *, cfg: MambaConfig, max_len: int) -> dict:
    """The zero state for the ``batch`` of prompts.

    Args:
        params: unused (the protocol passes them).
        batch: the prompt batch; only the batch size B of ``tokens [B, P]`` is read.
        cfg: the model config.
        max_len: unused: the state's size does not depend on the length.

    Returns:
        ``{'conv': [L, B, W - 1, E], 'ssm': [L, B, E, Z]}`` float32 zeros: the last W - 1 inputs
        of each convolution and each SSM state.
    """
    del params, max_len
    conv, state = _zero_states(cfg, batch["tokens"].shape[0])
    return {"conv": conv, "ssm": state}


def apply_cached(
    params: dict, tokens: jax.Array, cache: dict, *, cfg: MambaConfig, positions: jax.Array
) -> tuple[jax.Array, dict]:
    """Runs T new tokens from the cached state: the parallel scan for a prompt, the recurrent
    step for one token.

    Args:
        params: the param tree.
        tokens: ``[B, T]`` new tokens.
        cache: from :func:`init_cache` or a previous call.
        cfg: the model config.
        positions: ``[B, T]`` their positions; the state restarts at position 0, and (left)
            padding, position -1, never reaches the prompt.

    Returns:
        ``(logits [B, T, V] float32, updated cache)``.
    """
    reset = reset_mask(tokens.shape, positions, None)
    x = _embed(params, tokens, cfg, None)
    state = (cache["conv"], cache["ssm"])
    scan = "step" if tokens.shape[1] == 1 else None
    x, ((conv, h), _) = _layers(params, x, state, reset, cfg, None, scan)
    return _logits(params, x, cfg), {"conv": conv, "ssm": h}


__all__ = [
    "MambaConfig",
    "param_specs",
    "init",
    "apply",
    "init_cache",
    "apply_cached",
    "select_cache",
]
