"""RWKV-4 time mixing and channel mixing (Peng et al. 2023, "RWKV: Reinventing RNNs for the
Transformer Era"), as pure functions.

The WKV operator of one channel, with decay ``w = -exp(time_decay)`` (< 0) and bonus
``u = time_first``, is

    wkv_t = (S_{t-1} + e^{u + k_t} v_t) / (Z_{t-1} + e^{u + k_t}),
    S_t = e^w S_{t-1} + e^{k_t} v_t,    Z_t = e^w Z_{t-1} + e^{k_t}.

``S`` and ``Z`` overflow float32 for large keys, so the state is kept as ``(num, den, max)`` with
``S = num * e^max`` and ``Z = den * e^max`` (the running-max trick of transformers'
``rwkv_linear_attention_cpu``, which :func:`wkv_step` mirrors line by line).

Two forms compute it: :func:`wkv_step`, one token (generation), and :func:`wkv_chunked`, a whole
sequence (training): within a chunk of C steps the pairwise log-weights ``(i-1-j) w + k_j`` (and
``u + k_i`` on the diagonal) are formed at once and exponentiated against their row maximum; the
state is carried across chunks by ``lax.scan``. Both restart from the zero state where ``reset``
is set (a document start in a packed row); so does the token shift.

Dimension letters: A is the attention width (``attention_hidden_size``), C the chunk length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmzoo.params import ParamSpec

NEG_INF_MAX = -1e38  # the ``max`` of the zero state: e^max underflows to 0 against any key


def zero_state(batch_size: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The empty WKV state ``(num, den, max)``, each ``[B, A]`` float32."""
    zeros = jnp.zeros((batch_size, width), jnp.float32)
    return zeros, zeros, jnp.full((batch_size, width), NEG_INF_MAX, jnp.float32)


def _restart(state: tuple, reset: jax.Array) -> tuple:
    """``state`` with rows where ``reset [B]`` is set replaced by the zero state."""
    zero = zero_state(*state[0].shape)
    return tuple(jnp.where(reset[:, None], z, s) for z, s in zip(zero, state, strict=True))


def wkv_step(
    time_decay: jax.Array, time_first: jax.Array, k: jax.Array, v: jax.Array, state: tuple
) -> tuple[jax.Array, tuple]:
    """One recurrent WKV step (the generation form).

    Args:
        time_decay: ``[A]``; the decay per step is ``-exp(time_decay)`` in log space.
        time_first: ``[A]``, the bonus u of the current token.
        k: ``[B, A]`` keys; v: ``[B, A]`` values (float32).
        state: ``(num, den, max)``, each ``[B, A]`` float32.

    Returns:
        ``(wkv [B, A], new state)``.
    """
    w = -jnp.exp(time_decay.astype(jnp.float32))
    u = time_first.astype(jnp.float32)
    num, den, m = state
    m_out = jnp.maximum(m, u + k)
    e1, e2 = jnp.exp(m - m_out), jnp.exp(u + k - m_out)
    out = (e1 * num + e2 * v) / (e1 * den + e2)
    decayed, lost = _two_sum(m, w)
    m_new = jnp.maximum(decayed, k)
    e1, e2 = jnp.exp(decayed - m_new + lost), jnp.exp(k - m_new)
    return out, (e1 * num + e2 * v, e1 * den + e2, m_new)


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth's TwoSum).

    ``max + w`` rounds by up to half an ulp of ``max`` (2e-6 at keys near 60); folding the lost
    part into ``e1`` keeps that error from accumulating over the steps of a long sequence.
    """
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def wkv_recurrent(
    time_decay, time_first, k, v, state, reset=None, all_states: bool = False
) -> tuple[jax.Array, tuple]:
    """:func:`wkv_step` scanned over time: the reference form of :func:`wkv_chunked`.

    Args as :func:`wkv_chunked`; ``all_states`` returns the state after every token (``num,
    den, max [B, T, A]``, for inspection) instead of the final one. Returns ``(wkv [B, T, A]
    float32, final state)``.
    """
    reset = jnp.zeros(k.shape[:2], bool) if reset is None else reset

    def body(state, inputs):
        k_t, v_t, r_t = inputs
        out, state = wkv_step(time_decay, time_first, k_t, v_t, _restart(state, r_t))
        return state, ((out, state) if all_states else out)

    xs = (jnp.swapaxes(k, 0, 1), jnp.swapaxes(v, 0, 1), reset.T)
    state, out = jax.lax.scan(body, state, xs)
    if all_states:
        out, state = out[0], tuple(jnp.swapaxes(s, 0, 1) for s in out[1])
    return jnp.swapaxes(out, 0, 1), state


def _masked(x: jax.Array, keep: jax.Array) -> jax.Array:
    return jnp.where(keep, x, -jnp.inf)


def _chunk(w, u, k, v, state, reset):
    """The WKV of one chunk at once. ``k, v: [B, C, A]``, ``reset: [B, C]``; returns
    ``(wkv [B, C, A], state after the chunk)``."""
    c = k.shape[1]
    num0, den0, m0 = state
    seg = jnp.cumsum(reset, axis=1)  # a token sees j <= i of its own segment, and the state at 0
    i = jnp.arange(c)
    lag = jnp.maximum(i[:, None] - 1 - i[None, :], 0).astype(jnp.float32)  # [C, C]: i - 1 - j
    a = lag[None, :, :, None] * w + k[:, None, :, :]  # [B, C(i), C(j), A]
    a = jnp.where((i[:, None] == i[None, :])[None, :, :, None], u + k[:, None, :, :], a)
    sees = (i[:, None] >= i[None, :])[None] & (seg[:, :, None] == seg[:, None, :])  # [B, C, C]
    a = _masked(a, sees[..., None])
    a_s = _masked(m0[:, None, :] + i[None, :, None] * w, (seg == 0)[..., None])  # [B, C, A]
    top = jnp.maximum(a.max(axis=2), a_s)
    e, e_s = jnp.exp(a - top[:, :, None]), jnp.exp(a_s - top)
    out = (jnp.einsum("bija,bja->bia", e, v) + e_s * num0[:, None]) / (
        e.sum(axis=2) + e_s * den0[:, None]
    )
    last = seg[:, -1:]  # the state after the chunk holds the last segment only
    b = _masked((c - 1 - i)[None, :, None] * w + k, (seg == last)[..., None])  # [B, C, A]
    b_s = _masked(m0 + c * w, last == 0)
    m1 = jnp.maximum(b.max(axis=1), b_s)
    eb, eb_s = jnp.exp(b - m1[:, None]), jnp.exp(b_s - m1)
    num1 = jnp.einsum("bja,bja->ba", eb, v) + eb_s * num0
    return out, (num1, eb.sum(axis=1) + eb_s * den0, m1)


def wkv_chunked(
    time_decay: jax.Array,
    time_first: jax.Array,
    k: jax.Array,
    v: jax.Array,
    state: tuple,
    reset: jax.Array | None = None,
    *,
    chunk_size: int = 32,
) -> tuple[jax.Array, tuple]:
    """WKV over a whole sequence in chunks (the training form; equals :func:`wkv_recurrent`).

    Within a chunk the ``[B, C, C, A]`` log-weights are exponentiated against each row's maximum,
    so no term exceeds 1 whatever the keys; ``lax.scan`` carries ``(num, den, max)`` between
    chunks, and a last, shorter chunk takes the remainder of T.

    Args:
        time_decay: ``[A]``; the decay per step is ``-exp(time_decay)`` in log space.
        time_first: ``[A]``, the bonus u of the current token.
        k: ``[B, T, A]`` keys; v: ``[B, T, A]`` values (cast to float32).
        state: ``(num, den, max)``, each ``[B, A]``: the state before the first token.
        reset: optional ``[B, T]`` bool: the state restarts from zero before these steps.
        chunk_size: C.

    Returns:
        ``(wkv [B, T, A] float32, state after the last token)``.
    """
    b, t, width = k.shape
    k, v = k.astype(jnp.float32), v.astype(jnp.float32)
    reset = jnp.zeros((b, t), bool) if reset is None else reset
    w = -jnp.exp(time_decay.astype(jnp.float32))
    u = time_first.astype(jnp.float32)
    c = min(chunk_size, t)
    n, outs = t // c, []
    if n:

        def body(state, inputs):
            k_c, v_c, reset_c = inputs
            out, state = _chunk(w, u, k_c, v_c, state, reset_c)
            return state, out

        def chunks(x):  # [B, n C, ...] -> [n, B, C, ...]
            return jnp.swapaxes(x[:, : n * c].reshape(b, n, c, *x.shape[2:]), 0, 1)

        state, out = jax.lax.scan(body, state, (chunks(k), chunks(v), chunks(reset)))
        outs.append(jnp.swapaxes(out, 0, 1).reshape(b, n * c, width))
    if t > n * c:
        out, state = _chunk(w, u, k[:, n * c :], v[:, n * c :], state, reset[:, n * c :])
        outs.append(out)
    return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0], state


def token_shift(x: jax.Array, prev: jax.Array, reset: jax.Array) -> jax.Array:
    """The previous token's features: ``x`` shifted one step right.

    Args:
        x: ``[B, T, D]``.
        prev: ``[B, D]``, the features before ``x[:, 0]`` (zeros at a sequence start).
        reset: ``[B, T]`` bool: a document starts here, so its previous token is zeros.

    Returns:
        ``[B, T, D]``.
    """
    shifted = jnp.concatenate([prev[:, None].astype(x.dtype), x[:, :-1]], axis=1)
    return jnp.where(reset[..., None], jnp.zeros_like(shifted), shifted)


def _mix(x, shifted, mix):
    return x * mix.astype(x.dtype) + shifted * (1 - mix.astype(x.dtype))


def _dot(x, w):
    return jnp.einsum("btd,df->btf", x, w.astype(x.dtype))


def time_mixing(
    p: dict,
    x: jax.Array,
    state: tuple,
    reset: jax.Array,
    *,
    chunk_size: int = 32,
    all_states: bool = False,
) -> tuple[jax.Array, tuple]:
    """The RWKV-4 time-mixing block (``RwkvSelfAttention``).

    Args:
        p: ``{time_decay [A], time_first [A], mix_k, mix_v, mix_r [D], w_k, w_v, w_r [D, A],
            w_o [A, D]}``.
        x: ``[B, T, D]`` (normalised) inputs.
        state: ``(x_prev [B, D], num, den, max [B, A])``.
        reset: ``[B, T]`` bool document starts.
        chunk_size: the WKV chunk length C (a single token takes :func:`wkv_step`).
        all_states: return the state after every token (``x [B, T, D]`` and ``num, den, max
            [B, T, A]`` from :func:`wkv_recurrent`) instead of the last one (inspection).

    Returns:
        ``(out [B, T, D], new state)``; ``x_prev`` becomes ``x[:, -1]``.
    """
    x_prev, *wkv_state = state
    shifted = token_shift(x, x_prev, reset)
    k = _dot(_mix(x, shifted, p["mix_k"]), p["w_k"])
    v = _dot(_mix(x, shifted, p["mix_v"]), p["w_v"])
    r = jax.nn.sigmoid(_dot(_mix(x, shifted, p["mix_r"]), p["w_r"]))
    k, v = k.astype(jnp.float32), v.astype(jnp.float32)
    decay, first, wkv_state = p["time_decay"], p["time_first"], tuple(wkv_state)
    if all_states:  # every token's state, as the recurrent form carries it
        states = wkv_recurrent(decay, first, k, v, wkv_state, reset, all_states=True)[1]
    if x.shape[1] == 1:  # one token: the recurrent step
        wkv, wkv_state = wkv_step(decay, first, k[:, 0], v[:, 0], _restart(wkv_state, reset[:, 0]))
        wkv = wkv[:, None]
    else:
        wkv, wkv_state = wkv_chunked(decay, first, k, v, wkv_state, reset, chunk_size=chunk_size)
    out = jnp.einsum("bta,ad->btd", r * wkv.astype(x.dtype), p["w_o"].astype(x.dtype))
    if all_states:
        return out, (x.astype(jnp.float32), *states)
    return out, (x[:, -1].astype(jnp.float32), *wkv_state)


def channel_mixing(
    p: dict, x: jax.Array, x_prev: jax.Array, reset: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The RWKV-4 channel-mixing block (``RwkvFeedForward``): ``sigmoid(r) * W_v relu(k)^2``.

    Args:
        p: ``{mix_k, mix_r [D], w_k [D, F], w_r [D, D], w_v [F, D]}``.
        x: ``[B, T, D]`` (normalised) inputs.
        x_prev: ``[B, D]``, the features before ``x[:, 0]``.
        reset: ``[B, T]`` bool document starts.

    Returns:
        ``(out [B, T, D], new x_prev [B, D] float32)``.
    """
    shifted = token_shift(x, x_prev, reset)
    k = jnp.square(jax.nn.relu(_dot(_mix(x, shifted, p["mix_k"]), p["w_k"])))
    r = jax.nn.sigmoid(_dot(_mix(x, shifted, p["mix_r"]), p["w_r"]))
    return r * _dot(k, p["w_v"]), x[:, -1].astype(jnp.float32)


def time_mixing_specs(d: int, width: int, init) -> dict:
    """The matrices of :func:`time_mixing` (its per-channel vectors are declared by the model,
    whose initial values depend on the layer). ``init`` draws them."""
    specs = {
        name: ParamSpec((d, width), logical_axes=("embed", "mlp"), init=init)
        for name in ("w_k", "w_v", "w_r")
    }
    specs["w_o"] = ParamSpec((width, d), logical_axes=("mlp", "embed"), init=init)
    return specs


def channel_mixing_specs(d: int, d_ff: int, init) -> dict:
    """The matrices of :func:`channel_mixing`; ``init`` draws them."""
    return {
        "w_k": ParamSpec((d, d_ff), logical_axes=("embed", "mlp"), init=init),
        "w_r": ParamSpec((d, d), logical_axes=("embed", None), init=init),
        "w_v": ParamSpec((d_ff, d), logical_axes=("mlp", "embed"), init=init),
    }
