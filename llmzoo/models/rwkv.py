"""Kind ``rwkv``: RWKV-4 language models (Peng et al. 2023), the layout of Hugging Face's
``RwkvForCausalLM``: embedding, a LayerNorm on layer 0's input, L blocks of time mixing and channel
mixing (:mod:`llmzoo.layers.wkv`), each behind a pre-LayerNorm residual, a final LayerNorm, and
an LM head (untied by default).

Training and evaluation run the chunked WKV form over whole sequences (packed rows restart the
state, and the token shift, at every document); generation carries the recurrent state as the
cache, ``[L, B, D]`` or ``[L, B, A]`` per array whatever the length.

Param tree (layers stacked on a leading axis L; A the attention width, F the channel-mixing
width)::

    embed/table [V, D]      pre_norm/{scale, bias} [D]      final_norm/{scale, bias} [D]
    layers/att_norm, layers/ffn_norm: {scale, bias} [L, D]
    layers/att/{time_decay, time_first [L, A], mix_k, mix_v, mix_r [L, D],
                w_k, w_v, w_r [L, D, A], w_o [L, A, D]}
    layers/ffn/{mix_k, mix_r [L, D], w_k [L, D, F], w_r [L, D, D], w_v [L, F, D]}
    lm_head/w [D, V]        (untied embeddings only)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.config import ModelConfig, check_range
from llmzoo.layers import heads, wkv
from llmzoo.layers.norms import layer_norm, norm_specs
from llmzoo.layers.remat import layer_loop
from llmzoo.layers.residual import dropout
from llmzoo.layers.state import reset_mask
from llmzoo.layers.state import select_rows as select_cache  # [L, B, ...] arrays
from llmzoo.models import capture as capture_lib
from llmzoo.params import ParamSpec, init_params, normal, stack, with_dtype
from llmzoo.sharding import constrain, take_rows

ACT_AXES = ("batch", "seq", "embed")
FINAL_NORM_EPS = 1e-5  # transformers' ``ln_out`` ignores ``layer_norm_epsilon``
STATE_KEYS = ("att_x", "num", "den", "max", "ffn_x")  # the cache, per layer
NO_TAPS = capture_lib.NO_TAPS
CAPTURES = capture_lib.RECURRENT


@dataclasses.dataclass(frozen=True, kw_only=True)
class RwkvConfig(ModelConfig):
    """An RWKV-4 language model (kind ``rwkv``).

    The shared fields are documented on :class:`llmzoo.config.ModelConfig`. ``max_seq_len``
    (transformers' ``context_length``) is no hard limit: there is no position table.

    Attributes:
        family: ``rwkv``.
        d_model: D.
        n_layers: L.
        d_attn: A, the width of keys, values and the WKV state (None: D).
        d_ff: F, the channel-mixing width (None: 4 D).
        norm_eps: the blocks' LayerNorm epsilon (the final norm's is 1e-5, as in transformers).
        rescale_every: halve the residual stream after every ``rescale_every`` blocks, and scale
            the block outputs to match (transformers' inference-time rescaling, which keeps
            float16 in range; 0 disables it). It changes the logits only through the
            LayerNorm epsilons.
        tie_embeddings: the LM head is the transposed embedding table.
        chunk_size: the chunk length of the training form of WKV (a [B, C, C, A] tensor per
            chunk); results do not depend on it.
    """

    FAMILIES = ("rwkv",)

    kind: str = "rwkv"
    family: str = "rwkv"
    d_model: int = 512
    n_layers: int = 6
    d_attn: int | None = None
    d_ff: int | None = None
    norm_eps: float = 1e-5
    rescale_every: int = 0
    tie_embeddings: bool = False
    chunk_size: int = 32

    def __post_init__(self):
        super().__post_init__()
        for key in ("d_model", "n_layers", "chunk_size"):
            check_range(f"model.{key}", getattr(self, key), lo=1)
        for key in ("d_attn", "d_ff"):
            if getattr(self, key) is not None:
                check_range(f"model.{key}", getattr(self, key), lo=1)
        check_range("model.norm_eps", self.norm_eps, lo=0.0)
        check_range("model.rescale_every", self.rescale_every, lo=0)

    @property
    def attn_width(self) -> int:
        """A: ``d_attn`` resolved."""
        return self.d_attn or self.d_model

    @property
    def ffn_width(self) -> int:
        """F: ``d_ff`` resolved."""
        return self.d_ff or 4 * self.d_model


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """Initial values of the per-channel vectors ``[L, A or D]``, graded over layers and
    channels as in transformers' ``RwkvPreTrainedModel._init_weights``."""

    name: str

    def __call__(self, key, shape, dtype):
        del key
        n_layers, width = shape
        layer = jnp.arange(n_layers, dtype=jnp.float32)[:, None]
        ratio_0_to_1 = layer / max(n_layers - 1, 1)
        ratio_1_to_0 = 1.0 - layer / n_layers
        channel = jnp.arange(width, dtype=jnp.float32)[None, :]
        if self.name == "time_decay":
            return (-5 + 8 * (channel / max(width - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)).astype(
                dtype
            )
        if self.name == "time_first":  # the RWKV-4 reference: log(0.3) plus a zigzag
            zigzag = 0.5 * ((channel + 1) % 3 - 1)
            return jnp.broadcast_to(jnp.log(0.3) + zigzag, shape).astype(dtype)
        power = {"mix_v": ratio_1_to_0, "mix_r": 0.5 * ratio_1_to_0}.get(self.name, ratio_1_to_0)
        offset = 0.3 * ratio_0_to_1 if self.name == "mix_v" else 0.0
        return ((channel / width) ** power + offset).astype(dtype)


def _vectors(names, n_layers: int, width: int, axis: str, schedule: str | None = None) -> dict:
    return {
        name: ParamSpec(
            (n_layers, width), logical_axes=("layers", axis), init=_Schedule(schedule or name)
        )
        for name in names
    }


def param_specs(cfg: RwkvConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    d, v, n = cfg.d_model, cfg.vocab_size, cfg.n_layers
    init = normal(cfg.init_std)
    att = stack(wkv.time_mixing_specs(d, cfg.attn_width, init), n)
    att |= _vectors(("time_decay", "time_first"), n, cfg.attn_width, "mlp")
    att |= _vectors(("mix_k", "mix_v", "mix_r"), n, d, "embed")
    ffn = stack(wkv.channel_mixing_specs(d, cfg.ffn_width, init), n)
    ffn |= _vectors(("mix_k", "mix_r"), n, d, "embed", schedule="mix_k")
    norms = stack({"att_norm": norm_specs(d), "ffn_norm": norm_specs(d)}, n)
    specs = {
        "embed": {"table": ParamSpec((v, d), logical_axes=("vocab", "embed"), init=init)},
        "pre_norm": norm_specs(d),
        "layers": {**norms, "att": att, "ffn": ffn},
        "final_norm": norm_specs(d),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = {"w": ParamSpec((d, v), logical_axes=("embed", "vocab"), init=init)}
    return with_dtype(specs, cfg.param_dtype)


def init(key: jax.Array, cfg: RwkvConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


def _embed(params, tokens, cfg, rng):
    """Embeddings and layer 0's LayerNorm. ``tokens: [B, T]`` -> ``[B, T, D]``."""
    x = take_rows(params["embed"]["table"].astype(cfg.compute_dtype), tokens)
    x = layer_norm(params["pre_norm"], x, eps=cfg.norm_eps)
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _logits(params, x, cfg, dtype=jnp.float32):
    """Final LayerNorm and LM head. ``x: [B, T, D]`` -> ``[B, T, V]`` in ``dtype``."""
    x = layer_norm(params["final_norm"], x, eps=FINAL_NORM_EPS)
    return heads.lm_head(params, x, tied=cfg.tie_embeddings, dtype=dtype)


def _block(p, x, state, reset, cfg, i, rng, taps=NO_TAPS):
    """One block. ``x: [B, T, D]``, ``state``: one layer's cache dict; returns both updated.
    ``taps`` captures the state after every token and captures or patches the output."""
    k, all_states = cfg.rescale_every, "state" in taps.want
    scale = 1.0 if k == 0 else 0.5 ** (i // k).astype(jnp.float32)  # on each block output
    rngs = (None, None) if rng is None else jax.random.split(jax.random.fold_in(rng, i + 1))
    att_state = tuple(state[key] for key in STATE_KEYS[:4])
    h = layer_norm(p["att_norm"], x, eps=cfg.norm_eps)
    h, att_state = wkv.time_mixing(
        p["att"], h, att_state, reset, chunk_size=cfg.chunk_size, all_states=all_states
    )
    x = x + dropout(h * scale, cfg.dropout, rngs[0]).astype(x.dtype)
    h = layer_norm(p["ffn_norm"], x, eps=cfg.norm_eps)
    ffn_x = h.astype(jnp.float32) if all_states else None  # every token's, [B, T, D]
    h, last = wkv.channel_mixing(p["ffn"], h, state["ffn_x"], reset)
    x = x + dropout(h * scale, cfg.dropout, rngs[1]).astype(x.dtype)
    if k:
        x = jnp.where((i + 1) % k == 0, x * 0.5, x)
    new_state = dict(zip(STATE_KEYS, (*att_state, last if ffn_x is None else ffn_x), strict=True))
    if all_states:
        new_state = jax.tree.map(lambda s: s[:, -1], taps("state", new_state))
    return taps("residual", constrain(x, ACT_AXES)), new_state


def _layers(params, x, state, reset, cfg, rng, capture=(), patch=None):
    """The block stack (``lax.scan`` over L). ``x: [B, T, D]``, ``state``: the cache dict of
    ``[L, B, *]`` arrays; ``capture`` and ``patch`` (sliced per layer) as in :func:`apply`.
    Returns ``(x [B, T, D], (final state, captured))``."""

    def body(x, layer):
        p, s, i, patch_i = layer
        taps = capture_lib.layer_taps(capture, patch_i)
        x, s = _block(p, x, s, reset, cfg, i, rng, taps)
        return x, (s, taps.captured)

    xs = (params["layers"], state, jnp.arange(cfg.n_layers), patch or {})
    return layer_loop(body, x, xs, policy=cfg.remat, scan=cfg.scan_layers)


def _zero_states(cfg: RwkvConfig, batch_size: int) -> dict:
    """The empty cache: ``att_x, ffn_x [L, B, D]`` zeros, ``num, den, max [L, B, A]``."""
    num, den, top = wkv.zero_state(batch_size, cfg.attn_width)
    x = jnp.zeros((batch_size, cfg.d_model), jnp.float32)
    one = dict(zip(STATE_KEYS, (x, num, den, top, x), strict=True))
    return jax.tree.map(lambda s: jnp.broadcast_to(s, (cfg.n_layers, *s.shape)), one)


def apply(
    params: dict,
    batch: dict,
    *,
    cfg: RwkvConfig,
    rng: jax.Array | None = None,
    capture: tuple[str, ...] = (),
    patch: dict | None = None,
) -> dict:
    """Runs the model on full sequences (training and evaluation).

    Args:
        params: the param tree of :func:`param_specs`.
        batch: ``tokens [B, T]`` int ids; optional ``positions [B, T]`` and ``segment_ids [B, T]``
            (packed rows: the state restarts at each document, see
            :func:`llmzoo.layers.state.reset_mask`).
        cfg: the model config.
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        capture: names of intermediates to return (static; :data:`CAPTURES`); ``()`` compiles
            the same program as without it. ``residual [L + 1, B, T, D]``: row 0 the
            embeddings after ``pre_norm``, row l + 1 block l's output (the last row is the
            stream before the final norm); ``state``: a dict of the cache's keys, each layer's
            state after each token: ``att_x, ffn_x [L, B, T, D]`` (the normalised inputs of the
            token shifts) and the WKV state ``num, den, max [L, B, T, A]`` float32 (as
            :func:`llmzoo.layers.wkv.wkv_step` carries it: the state :func:`apply_cached`
            returns after feeding the tokens one at a time).
        patch: ``{'residual': (values [L + 1, B, T, D], where [L + 1, B, T])}``: activation
            patching, as in :func:`llmzoo.models.decoder.apply`.

    Returns:
        ``{'logits': [B, T, V]}`` in the compute dtype; ``'captured'``: ``{name: ...}`` if
        ``capture``.

    Raises:
        ConfigError: a ``capture`` or ``patch`` name the kind does not have (``attn_probs``).
    """
    capture = capture_lib.check_capture("rwkv", capture, patch, CAPTURES)
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


def init_cache(params: dict, batch: dict, *, cfg: RwkvConfig, max_len: int) -> dict:
    """The empty state for the ``batch`` of prompts.

    Args:
        params: unused (the protocol passes them).
        batch: the prompt batch; only the batch size B of ``tokens [B, P]`` is read.
        cfg: the model config.
        max_len: unused: the state's size does not depend on the length.

    Returns:
        ``{'att_x', 'ffn_x': [L, B, D], 'num', 'den', 'max': [L, B, A]}``, float32: per layer the
        last normalised inputs of the two token shifts and the WKV state.
    """
    del params, max_len
    return _zero_states(cfg, batch["tokens"].shape[0])


def apply_cached(
    params: dict, tokens: jax.Array, cache: dict, *, cfg: RwkvConfig, positions: jax.Array
) -> tuple[jax.Array, dict]:
    """Runs T new tokens from the cached state (prefill with T = prompt length, decode with T = 1,
    which takes the recurrent WKV step).

    Args:
        params: the param tree.
        tokens: ``[B, T]`` new tokens.
        cache: from :func:`init_cache` or a previous call.
        cfg: the model config.
        positions: ``[B, T]`` their positions; the state restarts at position 0, and (left)
            padding, position -1, leaves it empty.

    Returns:
        ``(logits [B, T, V] float32, updated cache)``.
    """
    reset = reset_mask(tokens.shape, positions, None)
    x = _embed(params, tokens, cfg, None)
    x, (state, _) = _layers(params, x, cache, reset, cfg, None)
    return _logits(params, x, cfg), state


__all__ = [
    "RwkvConfig",
    "param_specs",
    "init",
    "apply",
    "init_cache",
    "apply_cached",
    "select_cache",
]
