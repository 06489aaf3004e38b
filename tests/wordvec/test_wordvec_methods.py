"""Word2Vec and GloVe: losses against hand and numpy values, pair and count generation, and the
recovery of planted word classes."""

import jax.numpy as jnp
import numpy as np
import pytest
from planted import N_CLASSES, class_purity, planted_corpus

from llmzoo.errors import ConfigError, DataError
from llmzoo.wordvec import (
    cooccurrence,
    glove_loss,
    method_config,
    sgns_loss,
    skipgram_pairs,
    tokenize,
    train_vectors,
    weighting,
)
from llmzoo.wordvec.word2vec import keep_probabilities, noise_distribution

# Planted corpus: 4 classes of 10 words, 1500 sentences. A word's 5 nearest neighbours (among
# all 44 words) are in its own class for a share of >= 0.9 of them; random vectors score about
# 9/43 = 0.21 (chance), so the thresholds below separate learning from chance widely.
PURITY_THRESHOLD = 0.9
CHANCE_CEILING = 0.4
FAST = {
    "word2vec": {"dim": 16, "epochs": 5, "batch_size": 256},
    "glove": {"dim": 16, "epochs": 30},
}


def test_tokenize_keeps_identifiers():
    text = "def __init__(self, x: int) -> List[int]: return 3.5e2"
    assert tokenize(text) == ["def", "__init__", "self", "x", "int", "list", "int", "return"]


def test_sgns_loss_matches_numpy():
    rng = np.random.default_rng(0)
    v_in, v_out = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    centers, contexts = np.array([0, 3, 6]), np.array([1, 2, 5])
    negatives = np.array([[4, 5], [0, 1], [2, 2]])

    def log_sigmoid(x):
        return -np.log1p(np.exp(-x))

    v = v_in[centers]
    pos = log_sigmoid(np.sum(v * v_out[contexts], -1))
    neg = log_sigmoid(-np.einsum("bd,bkd->bk", v, v_out[negatives])).sum(-1)
    expected = -np.mean(pos + neg)
    params = {"in": jnp.asarray(v_in, jnp.float32), "out": jnp.asarray(v_out, jnp.float32)}
    batch = {"centers": centers, "contexts": contexts, "negatives": negatives}
    np.testing.assert_allclose(float(sgns_loss(params, batch)), expected, rtol=1e-5)


def test_glove_weighting_and_loss_by_hand():
    # f(x) = min(1, (x / 100) ** 0.75): f(100) = 1, f(200) = 1, f(6.25) = (1/16) ** 0.75 = 1/8.
    np.testing.assert_allclose(weighting(jnp.array([100.0, 200.0, 6.25])), [1, 1, 0.125])
    # A 2 x 2 example with D = 1: w = [1, 2], w_ctx = [3, -1], b = [0.5, 0], b_ctx = [0, 1].
    params = {
        "w": jnp.array([[1.0], [2.0]]),
        "w_ctx": jnp.array([[3.0], [-1.0]]),
        "b": jnp.array([0.5, 0.0]),
        "b_ctx": jnp.array([0.0, 1.0]),
    }
    e = float(np.e)
    # X_00 = e (f = (e/100)^0.75), X_01 = 100 (f = 1), X_11 = 1 (f = 0.01^0.75); X_10 = 0.
    batch = {"rows": jnp.array([0, 0, 1]), "cols": jnp.array([0, 1, 1])}
    batch["values"] = jnp.array([e, 100.0, 1.0])
    # errors: 1*3 + 0.5 + 0 - 1 = 2.5;  1*-1 + 0.5 + 1 - log 100;  2*-1 + 0 + 1 - 0 = -1.
    expected = (
        (e / 100) ** 0.75 * 2.5**2 + 1.0 * (0.5 - np.log(100.0)) ** 2 + 0.01**0.75 * (-1.0) ** 2
    )
    np.testing.assert_allclose(float(glove_loss(params, batch)), expected, rtol=1e-5)


def test_cooccurrence_is_symmetric_and_weighted_by_distance():
    # Documents [0, 1, 2, 0] and [1, 1], window 2: distance 1 adds 1, distance 2 adds 1/2.
    # Distance 1: 0-1, 1-2, 2-0 and (second document) 1-1; distance 2: 0-2 and 1-0.
    rows, cols, values = cooccurrence([np.array([0, 1, 2, 0]), np.array([1, 1])], 3, window=2)
    x = np.zeros((3, 3))
    x[rows, cols] = values
    expected = [[0.0, 1.5, 1.5], [1.5, 2.0, 1.0], [1.5, 1.0, 0.0]]
    np.testing.assert_allclose(x, expected)


def test_skipgram_pairs_stay_in_documents_and_in_the_window():
    docs = [np.array([0, 1, 2]), np.array([3, 4])]
    keep = np.ones(5)
    centers, contexts = skipgram_pairs(docs, keep, 1, np.random.default_rng(0))
    pairs = sorted(zip(centers.tolist(), contexts.tolist(), strict=True))
    assert pairs == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)]


def test_dynamic_window_weights_distance_d_by_its_chance_of_being_reached():
    # Each center reaches b ~ U{1..5}: a neighbour at distance d is taken with chance (6 - d)/5.
    doc = np.arange(20000) % 1000
    centers, contexts = skipgram_pairs([doc], np.ones(1000), 5, np.random.default_rng(0))
    dist = np.abs(centers.astype(np.int64) - contexts) % 1000
    share = np.bincount(dist, minlength=6)[1:6] / (2 * len(doc))
    np.testing.assert_allclose(share, [1.0, 0.8, 0.6, 0.4, 0.2], atol=0.01)


def test_subsampling_and_noise_formulas():
    counts = np.array([750, 248, 2])  # shares f = 0.75, 0.248, 0.002
    keep = keep_probabilities(counts, 1e-3)
    f = counts / 1000
    np.testing.assert_allclose(keep[:2], (np.sqrt(f[:2] / 1e-3) + 1) * 1e-3 / f[:2])
    assert keep[2] == 1.0  # (sqrt(2) + 1) / 2 > 1: words rarer than ~2.6 t are always kept
    np.testing.assert_allclose(keep_probabilities(counts, 0), 1.0)
    noise = noise_distribution(counts)
    np.testing.assert_allclose(noise, counts**0.75 / np.sum(counts**0.75))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["word2vec", "glove"])
def test_planted_classes_are_recovered(method, seed):
    sentences, classes = planted_corpus(seed)
    cfg = method_config(method, seed=seed, **FAST[method])
    vocab, vectors, losses = train_vectors(sentences, cfg)
    assert len(vocab) == N_CLASSES * 10 + 4
    assert losses[-1] < losses[0]
    purity = class_purity(vectors, vocab.words, classes)
    assert purity >= PURITY_THRESHOLD, f"{method} seed {seed}: purity {purity:.3f}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_vectors_score_near_chance(seed):
    sentences, classes = planted_corpus(seed)
    words = sorted({w for s in sentences for w in s.split()})
    vectors = np.random.default_rng(seed).normal(size=(len(words), 16))
    purity = class_purity(vectors, words, classes)
    assert purity < CHANCE_CEILING, purity


def test_bad_options_and_empty_corpora_are_errors():
    with pytest.raises(ConfigError, match="dim=0"):
        method_config("glove", dim=0)
    with pytest.raises(ConfigError, match="no option 'dims'"):
        method_config("word2vec", dims=3)
    with pytest.raises(ConfigError, match="unknown method 'fasttext'"):
        method_config("fasttext")
    with pytest.raises(DataError, match="min_count=5"):
        train_vectors(["only a few words here"], method_config("word2vec"))
    with pytest.raises(DataError, match="no co-occurring words"):
        train_vectors(["a", "b"], method_config("glove"), min_count=1)
