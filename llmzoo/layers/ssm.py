"""The selective state-space mixer of Mamba (Gu & Dao, 2023): pure functions over plain params.

Dimension letters: B batch, T time, D model width, E inner width (``expand * D``), Z state size
(N in the paper), R the rank of the time-step projection (``dt_rank``), W the width of the causal
depthwise convolution, K the chunk length of :func:`chunked_scan`.

Per channel e and state index z the recurrence is ``h_t = dA_t * h_{t-1} + dB_t * x_t`` and
``y_t = <h_t, C_t> + D * x_t``, with the zero-order-hold discretisation ``dA = exp(dt * A)`` and
the simplified (Euler) ``dB * x = dt * B * x`` of the paper. ``dt``, ``B`` and ``C`` depend on the
input (the "selection"); ``A = -exp(A_log)`` and the skip ``D`` do not.

Training runs the recurrence for all T steps at once: with ``jax.lax.associative_scan`` over
``[B, T, E, Z]`` pairs ``(dA, dB * x)`` (:func:`associative_scan`, the default), or in chunks of
K steps, associative within a chunk and sequential across chunks (:func:`chunked_scan`: less
memory for long sequences, the same numbers); generation runs one step at a time
(:func:`ssm_step`). A ``reset [B, T]`` mask restarts the state before a step (packed documents,
left padding): the scan multiplies ``dA`` by 0 there, and the convolution hides the inputs of
earlier documents from its window (:func:`causal_conv`).

Param layout (Hugging Face ``MambaMixer`` names in brackets; ``nn.Linear`` weights transposed)::

    in_proj [D, 2, E]   (in_proj.weight [2E, D]: x, then the gate z)   in_bias [2, E]
    conv_w [W, E]       (conv1d.weight [E, 1, W])                      conv_b [E]
    x_proj [E, R + 2Z]  (x_proj.weight: dt, B, C)
    dt_proj [R, E]      dt_bias [E]
    A_log [E, Z]        skip [E] (the paper's D)
    out_proj [E, D]     out_bias [D]
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from llmzoo.params import ParamSpec, normal, ones, zeros
from llmzoo.sharding import constrain

INNER_AXES = ("batch", "seq", "mlp")


@dataclasses.dataclass(frozen=True)
class _Uniform:
    bound: float

    def __call__(self, key, shape, dtype):
        return jax.random.uniform(key, shape, jnp.float32, -self.bound, self.bound).astype(dtype)


@dataclasses.dataclass(frozen=True)
class _ALog:
    """``A_log[e, z] = log(z + 1)``: the S4D-real initialisation (A = -1, -2, ... -Z)."""

    def __call__(self, key, shape, dtype):
        del key
        return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32)), shape)


@dataclasses.dataclass(frozen=True)
class _DtBias:
    """Inverse softplus of ``dt`` drawn log-uniformly in ``[dt_min, dt_max]`` (floored)."""

    dt_min: float
    dt_max: float
    floor: float

    def __call__(self, key, shape, dtype):
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32) * (hi - lo) + lo)
        dt = jnp.maximum(dt, self.floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def mixer_specs(
    d: int,
    e: int,
    z: int,
    r: int,
    w: int,
    *,
    use_bias: bool = False,
    use_conv_bias: bool = True,
    dt_range: tuple[float, float, float] = (1e-3, 0.1, 1e-4),
    init_std: float = 0.02,
) -> dict:
    """Param specs of one mixer (sizes D, E, Z, R, W as in the module docstring).

    ``dt_range`` is ``(dt_min, dt_max, floor)`` of the time-step bias initialisation. The inner
    width E is the ``mlp`` logical axis (split by tensor parallelism), D is ``embed``.
    """
    specs = {
        "in_proj": ParamSpec((d, 2, e), logical_axes=("embed", None, "mlp"), init=normal(init_std)),
        "conv_w": ParamSpec((w, e), logical_axes=(None, "mlp"), init=_Uniform(w**-0.5)),
        "x_proj": ParamSpec((e, r + 2 * z), logical_axes=("mlp", None), init=normal(init_std)),
        "dt_proj": ParamSpec((r, e), logical_axes=(None, "mlp"), init=_Uniform(r**-0.5)),
        "dt_bias": ParamSpec((e,), logical_axes=("mlp",), init=_DtBias(*dt_range)),
        "A_log": ParamSpec((e, z), logical_axes=("mlp", None), init=_ALog()),
        "skip": ParamSpec((e,), logical_axes=("mlp",), init=ones),
        "out_proj": ParamSpec((e, d), logical_axes=("mlp", "embed"), init=normal(init_std)),
    }
    if use_conv_bias:
        specs["conv_b"] = ParamSpec((e,), logical_axes=("mlp",), init=zeros)
    if use_bias:
        specs["in_bias"] = ParamSpec((2, e), logical_axes=(None, "mlp"), init=zeros)
        specs["out_bias"] = ParamSpec((d,), logical_axes=("embed",), init=zeros)
    return specs


def causal_conv(
    p: dict, x: jax.Array, conv_state: jax.Array, reset: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The causal depthwise convolution over time, from a rolling state, resets respected.

    Output t is ``sum_k conv_w[k] * x[t - (W - 1) + k] + conv_b`` (PyTorch's ``conv1d`` with
    ``W - 1`` zeros of left padding), where inputs before the last reset at or before t count
    as zeros: the window never looks across a document start.

    Args:
        p: ``{'conv_w': [W, E], 'conv_b'?: [E]}``.
        x: ``[B, T, E]`` inputs.
        conv_state: ``[B, W - 1, E]`` the inputs before ``x`` (zeros where they belong to an
            earlier document than ``x[:, 0]``, as this function returns them).
        reset: ``[B, T]`` bool, the state restarts before these steps.

    Returns:
        ``(y [B, T, E] float32, new conv_state [B, W - 1, E])``: the state holds the last W - 1
        inputs, zeroed where they precede the last document's start.
    """
    w = p["conv_w"].astype(jnp.float32)
    width, t = w.shape[0], x.shape[1]
    xs = jnp.concatenate([conv_state.astype(jnp.float32), x.astype(jnp.float32)], axis=1)
    seg = jnp.cumsum(reset.astype(jnp.int32), axis=1)  # [B, T]: document index within x
    seg = jnp.pad(seg, ((0, 0), (width - 1, 0)))  # the carried inputs are document 0
    y = jnp.zeros(x.shape, jnp.float32)
    for k in range(width):
        same = seg[:, k : k + t] == seg[:, width - 1 :]
        y = y + jnp.where(same[..., None], xs[:, k : k + t], 0.0) * w[k]
    if "conv_b" in p:
        y = y + p["conv_b"].astype(jnp.float32)
    last = seg[:, t:] == seg[:, -1:]  # [B, W - 1]
    new_state = jnp.where(last[..., None], xs[:, t:], 0.0).astype(conv_state.dtype)
    return y, new_state


def _combine(left, right):
    """Composes two affine maps ``h -> a * h + b`` (left first): the scan's associative op."""
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def associative_scan(
    log_da: jax.Array,
    dbx: jax.Array,
    c: jax.Array,
    h0: jax.Array,
    reset: jax.Array,
    all_states: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """All T steps of ``h_t = dA_t * h_{t-1} + dBx_t``, ``y_t = <h_t, C_t>`` in parallel.

    Uses ``jax.lax.associative_scan`` over time (log T depth); ``dA`` is 0 at resets, so the
    state restarts from zero there.

    Args:
        log_da: ``[B, T, E, Z]`` ``dt * A``, the log of ``dA``.
        dbx: ``[B, T, E, Z]`` ``dt * B * x``.
        c: ``[B, T, Z]``.
        h0: ``[B, E, Z]`` the state before step 0.
        reset: ``[B, T]`` bool.
        all_states: return the state after every step, ``[B, T, E, Z]``, not just the last.

    Returns:
        ``(y [B, T, E], h [B, E, Z] after the last step)``, float32.
    """
    da = jnp.where(reset[:, :, None, None], 0.0, jnp.exp(log_da))
    a, b = jax.lax.associative_scan(_combine, (da, dbx), axis=1)
    h = b + a * h0[:, None]
    return jnp.einsum("btez,btz->bte", h, c), (h if all_states else h[:, -1])


def chunked_scan(
    log_da: jax.Array,
    dbx: jax.Array,
    c: jax.Array,
    h0: jax.Array,
    reset: jax.Array,
    chunk: int = 64,
    all_states: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The same recurrence as :func:`associative_scan`, in chunks of K = ``chunk`` steps: an
    associative scan within each chunk, ``lax.scan`` across chunks carrying the state.

    The ``[B, K, E, Z]`` intermediates of one chunk are live at a time rather than all T steps',
    at the cost of T / K sequential steps. Args and returns as :func:`associative_scan`.
    """
    b, t, e, z = dbx.shape
    k = min(chunk, t)
    n = -(-t // k)
    pad = ((0, 0), (0, n * k - t), (0, 0), (0, 0))  # padded steps (dA = 1, dBx = 0): no change
    da = jnp.pad(jnp.where(reset[:, :, None, None], 0.0, jnp.exp(log_da)), pad, constant_values=1)
    dbx, c = jnp.pad(dbx, pad), jnp.pad(c, pad[:3])
    xs = tuple(jnp.moveaxis(x.reshape(b, n, k, *x.shape[2:]), 1, 0) for x in (da, dbx, c))

    def body(h, chunk_xs):
        a, bx, cc = chunk_xs  # [B, K, E, Z], [B, K, E, Z], [B, K, Z]
        a, bx = jax.lax.associative_scan(_combine, (a, bx), axis=1)
        hs = bx + a * h[:, None]
        return hs[:, -1], (jnp.einsum("btez,btz->bte", hs, cc), hs if all_states else None)

    h, (y, hs) = jax.lax.scan(body, h0, xs)
    if all_states:
        h = jnp.moveaxis(hs, 0, 1).reshape(b, n * k, e, z)[:, :t]
    return jnp.moveaxis(y, 0, 1).reshape(b, n * k, e)[:, :t], h


def ssm_step(
    log_da: jax.Array, dbx: jax.Array, c: jax.Array, h: jax.Array, reset: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One recurrent step. ``log_da, dbx: [B, E, Z]``, ``c: [B, Z]``, ``h: [B, E, Z]``,
    ``reset: [B]``; returns ``(y [B, E], h')``."""
    h = jnp.where(reset[:, None, None], 0.0, jnp.exp(log_da) * h) + dbx
    return jnp.einsum("bez,bz->be", h, c), h


SCANS = ("chunked", "associative")


def _project(p: dict, x: jax.Array, name: str, spec: str, bias: str | None = None) -> jax.Array:
    """``einsum(spec, x, p[name]) (+ p[bias])`` in x's dtype, accumulated in float32."""
    y = jnp.einsum(spec, x, p[name].astype(x.dtype), preferred_element_type=jnp.float32)
    if bias is not None and bias in p:
        y = y + p[bias].astype(jnp.float32)
    return y


def mixer(
    p: dict,
    x: jax.Array,
    state: tuple[jax.Array, jax.Array],
    reset: jax.Array,
    *,
    scan: str = "associative",
    chunk: int = 64,
    all_states: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """The Mamba mixer (``MambaMixer.forward``) from a carried state.

    Args:
        p: the params of :func:`mixer_specs`.
        x: ``[B, T, D]`` (already normalised).
        state: ``(conv_state [B, W - 1, E], ssm_state [B, E, Z])``, float32.
        reset: ``[B, T]`` bool, where a document starts.
        scan: ``chunked`` (:func:`chunked_scan` with K = ``chunk``), ``associative``
            (:func:`associative_scan`) or ``step`` (:func:`ssm_step`, the recurrent form; T = 1).
        chunk: K of the chunked scan.
        all_states: the returned SSM state holds every step's, ``[B, T, E, Z]`` (inspection).

    Returns:
        ``(y [B, T, D] in x's dtype, new state)``.
    """
    xz = _project(p, x, "in_proj", "btd,dke->btke", "in_bias")
    u, conv_state = causal_conv(p, xz[:, :, 0], state[0], reset)
    u = constrain(jax.nn.silu(u), INNER_AXES)  # [B, T, E] float32
    r, z = p["dt_proj"].shape[0], p["A_log"].shape[1]
    dt_in, b, c = jnp.split(_project(p, u, "x_proj", "bte,ef->btf"), [r, r + z], axis=-1)
    dt = jax.nn.softplus(_project(p, dt_in, "dt_proj", "btr,re->bte", "dt_bias"))
    log_da = dt[..., None] * -jnp.exp(p["A_log"].astype(jnp.float32))  # dt * A: [B, T, E, Z]
    dbx = (dt * u)[..., None] * b[:, :, None, :]
    if scan == "step":
        y, h = ssm_step(log_da[:, 0], dbx[:, 0], c[:, 0], state[1], reset[:, 0])
        y, h = y[:, None], (h[:, None] if all_states else h)
    elif scan == "associative":
        y, h = associative_scan(log_da, dbx, c, state[1], reset, all_states)
    else:
        y, h = chunked_scan(log_da, dbx, c, state[1], reset, chunk, all_states)
    y = (y + u * p["skip"].astype(jnp.float32)) * jax.nn.silu(xz[:, :, 1])
    out = _project(p, y.astype(x.dtype), "out_proj", "bte,ed->btd", "out_bias")
    return out.astype(x.dtype), (conv_state, h)


def zero_state(batch_size: int, e: int, z: int, w: int) -> tuple[jax.Array, jax.Array]:
    """The initial ``(conv_state [B, W - 1, E], ssm_state [B, E, Z])``, float32 zeros."""
    return (
        jnp.zeros((batch_size, w - 1, e), jnp.float32),
        jnp.zeros((batch_size, e, z), jnp.float32),
    )


__all__ = [
    "mixer_specs",
    "causal_conv",
    "associative_scan",
    "chunked_scan",
    "ssm_step",
    "SCANS",
    "mixer",
    "zero_state",
]
