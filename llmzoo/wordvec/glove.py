"""GloVe: global vectors from a co-occurrence matrix by weighted least squares.

Pennington, Socher and Manning, "GloVe: Global Vectors for Word Representation" (EMNLP 2014).
``X_ij`` counts word ``j`` in the context of word ``i``: within ``window`` words either side, in
the same document, an occurrence at distance ``d`` adds ``1 / d`` (the paper's decreasing
weighting), symmetrically. Word vectors ``w``, context vectors ``w̃`` and biases ``b``, ``b̃``
minimise, over the nonzero entries of ``X``,

    J = Σ_ij f(X_ij) (w_i · w̃_j + b_i + b̃_j - log X_ij)²,
    f(x) = min(1, (x / x_max) ** α),   x_max = 100, α = 3/4,

with AdaGrad (step size 0.05, accumulators starting at 1 as in the reference C code) on
mini-batches of the shuffled entries. The word vectors are ``W + W̃`` (the paper's choice).

Dimensions: V vocabulary, D vector width, M nonzero entries of X, B entries per batch,
S steps per epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llmzoo.errors import DataError
from llmzoo.wordvec.steps import make_epoch_fn, shuffled_batches, steps_per_epoch
from llmzoo.wordvec.vocab import concatenate


@dataclasses.dataclass(frozen=True, kw_only=True)
class GloveConfig:
    """Hyperparameters of GloVe (defaults from the paper, for vectors narrower than 300).

    Attributes:
        dim: ``D``, the width of the vectors.
        window: the largest distance between co-occurring words.
        x_max: the count at which the weight ``f`` reaches 1.
        alpha: the exponent of ``f`` below ``x_max``.
        epochs: passes over the nonzero entries of ``X``.
        batch_size: ``B``.
        learning_rate: AdaGrad's step size.
        seed: seeds the initial vectors and the shuffling.
    """

    dim: int = 100
    window: int = 10
    x_max: float = 100.0
    alpha: float = 0.75
    epochs: int = 50
    batch_size: int = 4096
    learning_rate: float = 0.05
    seed: int = 0


def cooccurrence(
    documents: Sequence[np.ndarray], vocab_size: int, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero entries of the symmetric, distance-weighted co-occurrence matrix ``X``.

    Args:
        documents: each a ``[N_doc]`` int array of word ids below ``vocab_size``.
        vocab_size: ``V``.
        window: the largest distance counted; a pair at distance ``d`` adds ``1 / d``.

    Returns:
        ``rows [M]`` and ``cols [M]`` int32 and ``values [M]`` float64, sorted by (row, col):
        ``X[rows[m], cols[m]] = values[m]`` and ``X`` is symmetric.
    """
    ids, doc = concatenate(documents)
    keys, weights = [], []
    for d in range(1, window + 1):
        same = doc[:-d] == doc[d:]
        left, right = ids[:-d][same], ids[d:][same]
        keys += [left * vocab_size + right, right * vocab_size + left]
        weights += [np.full(2 * len(left), 1.0 / d)]
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    values = np.bincount(inverse, weights=np.concatenate(weights), minlength=len(unique))
    return (unique // vocab_size).astype(np.int32), (unique % vocab_size).astype(np.int32), values


def weighting(x: jax.Array, x_max: float = 100.0, alpha: float = 0.75) -> jax.Array:
    """The paper's weight ``f(x) = min(1, (x / x_max) ** alpha)``, elementwise."""
    return jnp.minimum(1.0, (x / x_max) ** alpha)


def init_params(key: jax.Array, vocab_size: int, dim: int) -> dict[str, jax.Array]:
    """Initial parameters as in the C code: uniform in ``±0.5 / D``, biases included.

    Returns:
        ``{"w": [V, D], "w_ctx": [V, D], "b": [V], "b_ctx": [V]}`` float32.
    """
    k_w, k_ctx, k_b, k_b_ctx = jax.random.split(key, 4)

    def uniform(k, shape):
        return jax.random.uniform(k, shape, jnp.float32, -0.5 / dim, 0.5 / dim)

    return {
        "w": uniform(k_w, (vocab_size, dim)),
        "w_ctx": uniform(k_ctx, (vocab_size, dim)),
        "b": uniform(k_b, (vocab_size,)),
        "b_ctx": uniform(k_b_ctx, (vocab_size,)),
    }


def glove_loss(
    params: dict[str, jax.Array],
    batch: dict[str, jax.Array],
    *,
    x_max: float = 100.0,
    alpha: float = 0.75,
) -> jax.Array:
    """The GloVe objective ``J`` summed over a batch of entries of ``X``.

    Args:
        params: ``{"w": [V, D], "w_ctx": [V, D], "b": [V], "b_ctx": [V]}``.
        batch: ``rows [B]``, ``cols [B]`` int word ids and ``values [B]``, the counts ``X_ij > 0``.
        x_max, alpha: the weighting function's parameters (see :func:`weighting`).

    Returns:
        A scalar: ``Σ_b f(X_b) (w_i · w̃_j + b_i + b̃_j - log X_b)²``.
    """
    rows, cols, x = batch["rows"], batch["cols"], batch["values"]
    dot = jnp.einsum("bd,bd->b", params["w"][rows], params["w_ctx"][cols])
    err = dot + params["b"][rows] + params["b_ctx"][cols] - jnp.log(x)
    return jnp.sum(weighting(x, x_max, alpha) * err**2)


def word_vectors(params: dict[str, jax.Array]) -> jax.Array:
    """The paper's word vectors ``W + W̃``, ``[V, D]``."""
    return params["w"] + params["w_ctx"]


def train_glove(
    documents: Sequence[np.ndarray], vocab_size: int, cfg: GloveConfig = GloveConfig()
) -> tuple[dict[str, jax.Array], list[float]]:
    """Counts co-occurrences and fits GloVe to them.

    Args:
        documents: each a ``[N_doc]`` int array of ids below ``vocab_size``.
        vocab_size: ``V``.
        cfg: the hyperparameters.

    Returns:
        ``params`` (see :func:`init_params`; the word vectors are :func:`word_vectors`) and the
        mean of ``J`` per entry of ``X`` in each epoch.
    """
    rows, cols, values = cooccurrence(documents, vocab_size, cfg.window)
    if len(values) == 0:
        raise DataError(
            "the corpus has no co-occurring words (documents of fewer than two known words); "
            "give more text or lower min_count"
        )
    entries = {"rows": rows, "cols": cols, "values": values.astype(np.float32)}
    rng = np.random.default_rng(cfg.seed)
    params = init_params(jax.random.key(cfg.seed), vocab_size, cfg.dim)
    optimizer = optax.adagrad(cfg.learning_rate, initial_accumulator_value=1.0, eps=0.0)
    opt_state = optimizer.init(params)

    def loss_fn(p, batch):
        return glove_loss(p, batch, x_max=cfg.x_max, alpha=cfg.alpha)

    epoch_fn = make_epoch_fn(loss_fn, optimizer)
    batch_size = min(cfg.batch_size, len(values))
    steps = steps_per_epoch(len(values), batch_size)
    history = []
    for _ in range(cfg.epochs):
        batches = shuffled_batches(entries, batch_size, steps, rng)
        params, opt_state, losses = epoch_fn(params, opt_state, batches)
        history.append(float(jnp.sum(losses)) / (steps * batch_size))
    return params, history
