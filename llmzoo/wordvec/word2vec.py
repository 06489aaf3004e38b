"""Word2Vec: skip-gram with negative sampling (SGNS).

Mikolov, Sutskever, Chen, Corrado and Dean, "Distributed Representations of Words and Phrases and
their Compositionality" (NeurIPS 2013). Each word has an input ("center") vector ``v`` and an
output ("context") vector ``u``. For a center word ``c`` seen with a context word ``o`` within a
window, and ``K`` noise words ``k_1..k_K`` drawn from the unigram distribution raised to 3/4,

    loss = -log σ(u_o · v_c) - Σ_k log σ(-u_k · v_c).

The recipe of the paper and its C code: a dynamic window (each center looks ``b ~ U{1..window}``
words either side, so near words count more), and subsampling of frequent words, keeping each
occurrence of word ``w`` with probability ``min(1, (sqrt(f(w) / t) + 1) · t / f(w))``, ``f(w)``
its share of the corpus's tokens (the C code's form of the paper's discard probability
``1 - sqrt(t / f(w))``). Pairs and negatives are drawn with numpy from a seeded generator; the
updates are Adam steps on the mean loss of a batch (the C code's per-pair SGD scales poorly to
batches, where frequent words collect hundreds of summed updates). Noise words that happen to
equal the context word are kept (the C code skips them). The word vectors are the input vectors.

Dimensions: V vocabulary, D vector width, P pairs, B pairs per batch, K negatives per pair,
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
class Word2VecConfig:
    """Hyperparameters of SGNS.

    Attributes:
        dim: ``D``, the width of the vectors.
        window: the largest distance between a center and a context word.
        negatives: ``K``, noise words per (center, context) pair.
        sample: the subsampling threshold ``t`` (0 keeps every word); 1e-3 suits small corpora,
            the paper's 1e-5 suits billions of words.
        noise_power: the exponent of the unigram noise distribution (3/4 in the paper).
        epochs: passes over the corpus (pairs, subsampling and negatives are redrawn each time).
        batch_size: ``B``.
        learning_rate: Adam's peak step size, decayed linearly to 0 over the run.
        seed: seeds the initial vectors and every draw.
    """

    dim: int = 100
    window: int = 5
    negatives: int = 5
    sample: float = 1e-3
    noise_power: float = 0.75
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 1e-2
    seed: int = 0


def init_params(key: jax.Array, vocab_size: int, dim: int) -> dict[str, jax.Array]:
    """Initial vectors as in the C code: ``in`` uniform in ``±0.5 / D``, ``out`` zero.

    Returns:
        ``{"in": [V, D], "out": [V, D]}`` float32.
    """
    scale = 0.5 / dim
    return {
        "in": jax.random.uniform(key, (vocab_size, dim), jnp.float32, -scale, scale),
        "out": jnp.zeros((vocab_size, dim), jnp.float32),
    }


def sgns_loss(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
    """Mean SGNS loss of a batch of pairs (see the module docstring).

    Args:
        params: ``{"in": [V, D], "out": [V, D]}``.
        batch: ``centers [B]``, ``contexts [B]`` and ``negatives [B, K]`` int word ids.

    Returns:
        A scalar: the mean over the ``B`` pairs of ``-log σ(u_o·v_c) - Σ_k log σ(-u_k·v_c)``.
    """
    v = params["in"][batch["centers"]]  # [B, D]
    u_pos = params["out"][batch["contexts"]]  # [B, D]
    u_neg = params["out"][batch["negatives"]]  # [B, K, D]
    pos = jnp.einsum("bd,bd->b", v, u_pos)
    neg = jnp.einsum("bd,bkd->bk", v, u_neg)
    return -jnp.mean(jax.nn.log_sigmoid(pos) + jax.nn.log_sigmoid(-neg).sum(-1))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Subsampling: the probability of keeping each occurrence of each word.

    Args:
        counts: ``[V]`` word counts.
        sample: the threshold ``t``; ``<= 0`` keeps everything.

    Returns:
        ``[V]`` float64, ``min(1, (sqrt(f / t) + 1) · t / f)`` with ``f = counts / counts.sum()``.
    """
    if sample <= 0:
        return np.ones(len(counts))
    f = counts / counts.sum()
    return np.minimum(1.0, (np.sqrt(f / sample) + 1.0) * sample / f)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """``[V]`` probabilities of drawing each word as a negative: ``counts ** power``, normalised."""
    p = counts.astype(np.float64) ** power
    return p / p.sum()


def skipgram_pairs(
    documents: Sequence[np.ndarray], keep: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Subsamples the documents and lists their (center, context) pairs in dynamic windows.

    Windows never cross a document boundary; a word is never its own context at distance 0.

    Args:
        documents: each a ``[N_doc]`` int array of word ids.
        keep: ``[V]`` keep probabilities (see :func:`keep_probabilities`).
        window: the largest distance; each center draws its own reach in ``1..window``.
        rng: the generator for the subsampling and the reaches.

    Returns:
        ``centers [P]`` and ``contexts [P]`` int32.
    """
    ids, doc = concatenate(documents)
    ids = ids.astype(np.int32)
    kept = rng.random(len(ids)) < keep[ids]
    ids, doc = ids[kept], doc[kept]
    reach = rng.integers(1, window + 1, size=len(ids))
    centers, contexts = [], []
    for d in range(1, window + 1):
        same = doc[:-d] == doc[d:]
        right = same & (reach[:-d] >= d)  # center at i, context at i + d
        left = same & (reach[d:] >= d)  # center at i + d, context at i
        centers += [ids[:-d][right], ids[d:][left]]
        contexts += [ids[d:][right], ids[:-d][left]]
    return np.concatenate(centers), np.concatenate(contexts)


def _epoch_batches(documents, counts, cfg, rng, shape=None) -> dict[str, np.ndarray]:
    """One epoch's pairs and negatives as ``[S, B]`` and ``[S, B, K]`` arrays; ``shape`` is
    ``(S, B)``, by default enough batches of at most ``cfg.batch_size`` for every pair once."""
    keep = keep_probabilities(counts, cfg.sample)
    centers, contexts = skipgram_pairs(documents, keep, cfg.window, rng)
    if len(centers) == 0:
        raise DataError(
            "the corpus gives no skip-gram pairs (documents of fewer than two known words); "
            "give more text or lower min_count"
        )
    if shape is None:
        batch_size = min(cfg.batch_size, len(centers))
        shape = (steps_per_epoch(len(centers), batch_size), batch_size)
    steps, batch_size = shape
    batches = shuffled_batches({"centers": centers, "contexts": contexts}, batch_size, steps, rng)
    noise = noise_distribution(counts, cfg.noise_power)
    negatives = rng.choice(len(counts), size=(*shape, cfg.negatives), p=noise)
    batches["negatives"] = negatives.astype(np.int32)
    return batches


def train_word2vec(
    documents: Sequence[np.ndarray], counts: np.ndarray, cfg: Word2VecConfig = Word2VecConfig()
) -> tuple[dict[str, jax.Array], list[float]]:
    """Trains SGNS vectors on documents of word ids.

    Every epoch has the number of steps of the first (whose pairs fix it), so that the epoch
    compiles once and the learning rate decays to 0 exactly at the end.

    Args:
        documents: each a ``[N_doc]`` int array of ids below ``V = len(counts)``.
        counts: ``[V]`` word counts (for subsampling and the noise distribution).
        cfg: the hyperparameters.

    Returns:
        ``params`` (``{"in": [V, D], "out": [V, D]}``; the word vectors are ``params["in"]``)
        and the mean loss of each epoch.
    """
    rng = np.random.default_rng(cfg.seed)
    params = init_params(jax.random.key(cfg.seed), len(counts), cfg.dim)
    first = _epoch_batches(documents, counts, cfg, rng)
    shape = first["centers"].shape  # (S, B)
    schedule = optax.linear_schedule(cfg.learning_rate, 0.0, shape[0] * cfg.epochs)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)
    epoch_fn = make_epoch_fn(sgns_loss, optimizer)
    history = []
    for epoch in range(cfg.epochs):
        batches = first if epoch == 0 else _epoch_batches(documents, counts, cfg, rng, shape)
        params, opt_state, losses = epoch_fn(params, opt_state, batches)
        history.append(float(jnp.mean(losses)))
    return params, history
