"""DeBERTa's disentangled attention (He et al., 2021) against references.

Log buckets against transformers' own ``make_log_bucket_position`` (exact, float32 boundaries);
the c2p/p2c terms against an explicit loop over the paper's formula.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.layers.disentangled import (
    disentangled_bias,
    disentangled_scale,
    make_log_bucket_position,
    position_projection_specs,
    project_relative,
    relative_index,
)


@pytest.mark.parametrize("bucket_size,max_position", [(256, 512), (8, 32), (32, 128)])
def test_log_buckets_match_transformers(bucket_size, max_position):
    torch = pytest.importorskip("torch")
    ref_fn = pytest.importorskip(
        "transformers.models.deberta_v2.modeling_deberta_v2"
    ).make_log_bucket_position
    rel = np.arange(-3 * max_position, 3 * max_position + 1)
    ref = ref_fn(torch.as_tensor(rel), bucket_size, max_position).long().numpy()
    got = np.asarray(jax.jit(make_log_bucket_position, static_argnums=(1, 2))(
        jnp.asarray(rel), bucket_size, max_position))  # fmt: skip
    np.testing.assert_array_equal(got, ref)
    mid = bucket_size // 2
    small = np.abs(rel) <= mid
    np.testing.assert_array_equal(got[small], rel[small])  # near distances keep their value
    assert got[rel == max_position - 1][0] == bucket_size - 1  # the log range ends at max - 1


def test_relative_index_clips_raw_distances():
    pos = jnp.arange(6)[None]
    idx = np.asarray(relative_index(pos, pos, span=3))
    expect = np.clip(np.arange(6)[:, None] - np.arange(6)[None, :] + 3, 0, 5)
    np.testing.assert_array_equal(idx[0], expect)


def test_disentangled_bias_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    b, t, n, h, span = 2, 7, 3, 4, 4
    q, k = (rng.standard_normal((b, t, n, h)).astype(np.float32) for _ in range(2))
    rel_q, rel_k = (rng.standard_normal((2 * span, n, h)).astype(np.float32) for _ in range(2))
    pos = np.stack([np.arange(t), np.array([0, 1, 2, 0, 1, 2, 3])])  # a packed second row
    idx = np.asarray(relative_index(jnp.asarray(pos), jnp.asarray(pos), span=span, bucket_size=4,
                                    max_position=16))  # fmt: skip
    got = np.asarray(disentangled_bias(q, k, rel_q, rel_k, jnp.asarray(idx)))
    want = np.zeros((b, n, t, t))
    for bi in range(b):
        for i in range(t):
            for j in range(t):
                r = idx[bi, i, j]
                # c2p: query i against the key-projected embedding of distance delta(i, j);
                # p2c: key j against the query-projected embedding of the same distance.
                want[bi, :, i, j] = (q[bi, i] * rel_k[r]).sum(-1) + (k[bi, j] * rel_q[r]).sum(-1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    only_c2p = np.asarray(disentangled_bias(q, k, None, rel_k, jnp.asarray(idx)))
    assert np.abs(only_c2p - got).max() > 1e-2


def test_scale_and_separate_projections():
    assert disentangled_scale(64, ("c2p", "p2c")) == pytest.approx(1 / math.sqrt(192))
    assert disentangled_scale(64, ()) == pytest.approx(1 / 8)
    specs = position_projection_specs(16, 2, 8, ("c2p",))
    assert sorted(specs) == ["bk", "wk"] and specs["wk"].shape == (16, 2, 8)
    params = {"wk": jnp.ones((16, 2, 8)), "bk": jnp.full((2, 8), 0.5)}
    rel_q, rel_k = project_relative(params, jnp.ones((6, 16)), ("c2p",))
    assert rel_q is None
    np.testing.assert_allclose(rel_k, np.full((6, 2, 8), 16.5))
