"""A planted corpus: words of a few latent classes, each sentence drawn from one class."""

import numpy as np

from llmzoo.wordvec.io import unit_rows

N_CLASSES = 4
WORDS_PER_CLASS = 10
FUNCTION_WORDS = ("the", "a", "of", "and")


def planted_corpus(seed: int, n_sentences: int = 1500, length: int = 10):
    """Sentences of ``length`` words: a class is drawn, then each word is a uniform word of that
    class (probability 0.8) or a function word shared by all classes.

    Returns:
        The sentences (str) and word -> class for the ``N_CLASSES * WORDS_PER_CLASS`` class words.
    """
    rng = np.random.default_rng(seed)
    classes = {f"c{c}w{i}": c for c in range(N_CLASSES) for i in range(WORDS_PER_CLASS)}
    sentences = []
    for _ in range(n_sentences):
        c = rng.integers(N_CLASSES)
        words = [
            f"c{c}w{rng.integers(WORDS_PER_CLASS)}"
            if rng.random() < 0.8
            else FUNCTION_WORDS[rng.integers(len(FUNCTION_WORDS))]
            for _ in range(length)
        ]
        sentences.append(" ".join(words))
    return sentences, classes


def class_purity(vectors, words, classes: dict[str, int], k: int = 5) -> float:
    """The mean, over the class words, of the share of their ``k`` cosine nearest neighbours
    (among all words, function words included) that belong to the same class."""
    unit = unit_rows(vectors)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    scores = []
    for i, w in enumerate(words):
        if w in classes:
            top = np.argsort(-sims[i])[:k]
            scores.append(np.mean([classes.get(words[j]) == classes[w] for j in top]))
    return float(np.mean(scores))
