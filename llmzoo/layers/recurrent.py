"""Recurrent cells (LSTM, GRU) and their scan over time: pure functions over plain param dicts.

Dimension letters: B batch, T time, D the input width, H the hidden size, G the gates of a cell
(4 for the LSTM, 3 for the GRU).

The gates follow PyTorch's ``torch.nn.LSTM`` (order i, f, g, o) and ``torch.nn.GRU`` (order r, z,
n, with the candidate's hidden bias inside the reset product, ``n = tanh(W_in x + b_in +
r * (W_hn h + b_hn))``), so weights copy over directly. PyTorch stores ``weight_ih_l{k}`` as
``[G * H, D]``; here ``w_ih`` is ``[D, G, H]`` (``weight_ih.reshape(G, H, D).transpose(2, 0, 1)``)
and ``b_ih`` is ``[G, H]``; likewise ``w_hh [H, G, H]`` and ``b_hh [G, H]``.

The input projection ``x @ w_ih + b_ih`` does not depend on the state, so a layer computes it for
all T steps in one matmul (:func:`input_projection`) and scans only the recurrent part
(:func:`lstm_step`, :func:`gru_step`) with ``lax.scan`` (:func:`scan_layer`). The state is a
tuple of ``[B, H]`` float32 arrays: ``(h, c)`` for the LSTM, ``(h,)`` for the GRU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.params import ParamSpec, zeros

GATES = {"lstm": 4, "gru": 3}
STATES = {"lstm": 2, "gru": 1}  # arrays in a cell's state: (h, c) or (h,)


@dataclasses.dataclass(frozen=True)
class _Uniform:
    bound: float

    def __call__(self, key, shape, dtype):
        return jax.random.uniform(key, shape, jnp.float32, -self.bound, self.bound).astype(dtype)


def cell_specs(cell: str, d_in: int, hidden: int) -> dict:
    """Param specs of one ``cell`` (``lstm`` or ``gru``) layer from width ``d_in`` to ``hidden``.

    Weights are drawn from U(-1/sqrt(H), 1/sqrt(H)) as in PyTorch; biases start at zero. The
    hidden axis is ``mlp`` (split by tensor parallelism); the input axis is ``embed``.

    Returns:
        ``{'w_ih': [D, G, H], 'w_hh': [H, G, H], 'b_ih': [G, H], 'b_hh': [G, H]}`` of ParamSpec.
    """
    g = GATES[cell]
    init = _Uniform(hidden**-0.5)
    return {
        "w_ih": ParamSpec((d_in, g, hidden), logical_axes=("embed", None, "mlp"), init=init),
        "w_hh": ParamSpec((hidden, g, hidden), logical_axes=("embed", None, "mlp"), init=init),
        "b_ih": ParamSpec((g, hidden), logical_axes=(None, "mlp"), init=zeros),
        "b_hh": ParamSpec((g, hidden), logical_axes=(None, "mlp"), init=zeros),
    }


def zero_state(cell: str, batch_size: int, hidden: int) -> tuple[jax.Array, ...]:
    """The initial state of ``cell``: ``(h, c)`` or ``(h,)``, each ``[B, H]`` float32 zeros."""
    return tuple(jnp.zeros((batch_size, hidden), jnp.float32) for _ in range(STATES[cell]))


def input_projection(p: dict, x: jax.Array) -> jax.Array:
    """``x @ w_ih + b_ih``: ``x [..., D]`` -> ``[..., G, H]`` float32."""
    w = p["w_ih"].astype(x.dtype)
    xw = jnp.einsum("...d,dgh->...gh", x, w, preferred_element_type=jnp.float32)
    return xw + p["b_ih"].astype(jnp.float32)


def _hidden_projection(p: dict, h: jax.Array) -> jax.Array:
    """``h @ w_hh + b_hh``: ``h [B, H]`` float32 -> ``[B, G, H]`` float32."""
    w = p["w_hh"].astype(jnp.float32)
    return jnp.einsum("bi,igh->bgh", h, w) + p["b_hh"].astype(jnp.float32)


def lstm_step(p: dict, xw: jax.Array, state: tuple) -> tuple:
    """One LSTM step from the projected input ``xw [B, 4, H]`` (:func:`input_projection`).

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)``, ``c' = f * c + i * g``, ``h' = o * tanh(c')``
    (Hochreiter & Schmidhuber, 1997; PyTorch's gate order i, f, g, o).

    Returns:
        The new state ``(h', c')``, each ``[B, H]`` float32.
    """
    h, c = state
    z = xw + _hidden_projection(p, h)
    i, f, g, o = (z[:, k] for k in range(4))
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def gru_step(p: dict, xw: jax.Array, state: tuple) -> tuple:
    """One GRU step from the projected input ``xw [B, 3, H]`` (:func:`input_projection`).

    ``r, z = sigmoid(.)``, ``n = tanh(x_n + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``
    (Cho et al., 2014, in PyTorch's form and gate order r, z, n).

    Returns:
        The new state ``(h',)``, ``[B, H]`` float32.
    """
    (h,) = state
    hw = _hidden_projection(p, h)
    r = jax.nn.sigmoid(xw[:, 0] + hw[:, 0])
    z = jax.nn.sigmoid(xw[:, 1] + hw[:, 1])
    n = jnp.tanh(xw[:, 2] + r * hw[:, 2])
    return ((1.0 - z) * n + z * h,)


STEPS = {"lstm": lstm_step, "gru": gru_step}


def lstm_cell(p: dict, x: jax.Array, state: tuple) -> tuple:
    """One LSTM step on the raw input ``x [B, D]``; returns ``(h', c')``, each ``[B, H]``."""
    return lstm_step(p, input_projection(p, x), state)


def gru_cell(p: dict, x: jax.Array, state: tuple) -> tuple:
    """One GRU step on the raw input ``x [B, D]``; returns ``(h',)``, ``[B, H]``."""
    return gru_step(p, input_projection(p, x), state)


def scan_layer(
    p: dict,
    x: jax.Array,
    state: tuple,
    *,
    cell: str,
    reset: jax.Array | None = None,
    all_states: bool = False,
) -> tuple[jax.Array, tuple]:
    """Runs one recurrent layer over time with ``lax.scan``.

    Args:
        p: the layer's params (:func:`cell_specs`).
        x: ``[B, T, D]`` inputs.
        state: the state before the first step (``(h, c)`` or ``(h,)``, each ``[B, H]``).
        cell: ``lstm`` or ``gru``.
        reset: optional ``[B, T]`` bool: where True the state is zeroed before that step (the
            start of a new document in a packed row, or left padding).
        all_states: return the state after every step (``[B, T, H]`` arrays) instead of the
            final one (for inspection; the final state is their last step).

    Returns:
        ``(h [B, T, H] float32, final state)``.
    """
    step = STEPS[cell]
    xw = jnp.swapaxes(input_projection(p, x), 0, 1)  # [T, B, G, H]
    if reset is None:
        reset = jnp.zeros(x.shape[:2], bool)

    def body(state, inputs):
        xw_t, reset_t = inputs
        state = tuple(jnp.where(reset_t[:, None], 0.0, s) for s in state)
        state = step(p, xw_t, state)
        return state, (state if all_states else state[0])

    state, ys = jax.lax.scan(body, state, (xw, jnp.swapaxes(reset, 0, 1)))
    if all_states:
        state = tuple(jnp.swapaxes(s, 0, 1) for s in ys)
        return state[0], state
    return jnp.swapaxes(ys, 0, 1), state


__all__ = [
    "GATES",
    "STATES",
    "cell_specs",
    "zero_state",
    "input_projection",
    "lstm_step",
    "gru_step",
    "lstm_cell",
    "gru_cell",
    "scan_layer",
]
