"""The unigram baseline."""

import math

import numpy as np
import pytest

from llmzoo.data import unigram_entropy
from llmzoo.errors import DataError


def test_uniform_counts_give_log_vocab():
    assert unigram_entropy([np.arange(8)] * 5, 8) == pytest.approx(math.log(8))


def test_cross_entropy_by_hand():
    # Counts [3, 1, 0] + 1 -> p = [4, 2, 1] / 7; scoring ids [0, 2]: -(log 4/7 + log 1/7) / 2.
    value = unigram_entropy([[0, 0, 0, 1]], 3, eval_token_ids=[0, 2])
    assert value == pytest.approx(-(math.log(4 / 7) + math.log(1 / 7)) / 2)


def test_out_of_range_ids():
    with pytest.raises(DataError, match="token id 9 is outside"):
        unigram_entropy([[1, 9]], 4)
