"""Positional encodings against formulas written out independently in numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.layers.positional import (
    RopeScaling,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_inv_freq,
    sinusoidal,
    t5_bias,
    t5_relative_bucket,
)

_rope = jax.jit(apply_rope)


# ------------------------------------------------------------------------------------ sinusoidal


def test_sinusoidal_matches_vaswani_loops():
    d, positions = 10, np.array([[0, 1, 7], [3, 50, 999]])
    out = np.asarray(jax.jit(sinusoidal, static_argnums=1)(jnp.asarray(positions), d))
    assert out.shape == (2, 3, d) and out.dtype == np.float32
    for b in range(2):
        for t in range(3):
            p = positions[b, t]
            for i in range(d // 2):
                angle = p / 10000 ** (2 * i / d)
                assert out[b, t, 2 * i] == pytest.approx(math.sin(angle), abs=2e-4)
                assert out[b, t, 2 * i + 1] == pytest.approx(math.cos(angle), abs=2e-4)


# ------------------------------------------------------------------------------------------ RoPE


def _rotation_matrix(p, inv_freq, h):
    """H x H block rotation for the rotate-half layout: plane (i, i + R/2) turns by p * f_i."""
    r = 2 * len(inv_freq)
    m = np.eye(h)
    for i, f in enumerate(inv_freq):
        a = p * float(f)
        c, s = math.cos(a), math.sin(a)
        j = i + r // 2
        m[i, i], m[i, j] = c, -s
        m[j, i], m[j, j] = s, c
    return m


@pytest.mark.parametrize("rotary_dim", [8, 4], ids=["full", "partial"])
def test_apply_rope_matches_rotation_matrices(rotary_dim):
    b, t, n, h = 2, 5, 3, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, t, n, h)).astype(np.float32)
    positions = rng.integers(0, 200, (b, t))
    inv_freq = 1.0 / 10000 ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    out = np.asarray(_rope(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(inv_freq)))
    for bi in range(b):
        for ti in range(t):
            rot = _rotation_matrix(positions[bi, ti], inv_freq, h)
            expected = x[bi, ti].astype(np.float64) @ rot.T  # each head: rot @ x
            np.testing.assert_allclose(out[bi, ti], expected, atol=1e-4)
    # partial rotary: the dims beyond R pass through bit-exactly
    np.testing.assert_array_equal(out[..., rotary_dim:], x[..., rotary_dim:])


def test_apply_rope_position_zero_is_identity_and_factor_scales():
    x = np.random.default_rng(1).standard_normal((1, 2, 1, 8)).astype(np.float32)
    inv_freq, _ = rope_inv_freq(8)
    pos0 = jnp.zeros((1, 2), jnp.int32)
    np.testing.assert_allclose(_rope(x, pos0, inv_freq), x, atol=1e-7)
    np.testing.assert_allclose(_rope(x, pos0, inv_freq, attention_factor=1.5), 1.5 * x, atol=1e-6)


@pytest.mark.parametrize(
    "scaling",
    [None, RopeScaling(kind="linear", factor=4.0), RopeScaling(kind="ntk", factor=2.0)],
    ids=["plain", "linear", "ntk"],
)
def test_rope_scores_depend_only_on_offset(scaling):
    h = 16
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 1, 1, h)).astype(np.float32)
    k = rng.standard_normal((1, 1, 1, h)).astype(np.float32)
    inv_freq, _ = rope_inv_freq(h, 10000.0, scaling)

    def score(m, n):
        qr = _rope(q, jnp.array([[m]]), inv_freq)
        kr = _rope(k, jnp.array([[n]]), inv_freq)
        return float(jnp.sum(qr * kr))

    for m, n in [(5, 2), (9, 9), (3, 11), (0, 7)]:
        base = score(m, n)
        for shift in (1, 17, 300):
            assert score(m + shift, n + shift) == pytest.approx(base, abs=1e-4)
    # ... and the offset does matter
    assert abs(score(5, 2) - score(5, 4)) > 1e-3


def test_rope_inv_freq_plain_and_linear():
    plain, factor = rope_inv_freq(8, 10000.0)
    np.testing.assert_allclose(plain, [1.0, 10000**-0.25, 10000**-0.5, 10000**-0.75], rtol=1e-6)
    assert factor == 1.0 and plain.dtype == np.float32
    linear, factor = rope_inv_freq(8, 10000.0, RopeScaling(kind="linear", factor=4.0))
    np.testing.assert_allclose(linear, plain / 4.0, rtol=1e-6)
    assert factor == 1.0


def test_rope_inv_freq_ntk():
    r, theta, s = 16, 10000.0, 8.0
    got, _ = rope_inv_freq(r, theta, RopeScaling(kind="ntk", factor=s))
    new_base = theta * s ** (r / (r - 2))  # NTK-aware: base * s^(d / (d - 2))
    expected = [new_base ** (-2 * i / r) for i in range(r // 2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the highest frequency (pair 0) is unchanged; the lowest (exponent (r-2)/r) is divided by
    # exactly s, which is what the base change s^(r/(r-2)) is designed to do
    plain, _ = rope_inv_freq(r, theta)
    assert got[0] == pytest.approx(plain[0])
    assert got[-1] == pytest.approx(plain[-1] / s, rel=1e-5)


def _llama3_reference(inv_freq, factor, low_ff, high_ff, old_ctx):
    """Meta's apply_scaling (llama-models), written as a per-frequency loop."""
    low_freq_wavelen = old_ctx / low_ff
    high_freq_wavelen = old_ctx / high_ff
    out = []
    for freq in inv_freq:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def test_rope_inv_freq_llama3_bands():
    r, theta = 128, 500000.0
    sc = RopeScaling(
        kind="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    got, factor = rope_inv_freq(r, theta, sc)
    plain = 1.0 / theta ** (np.arange(0, r, 2) / r)
    np.testing.assert_allclose(got, _llama3_reference(plain, 8.0, 1.0, 4.0, 8192), rtol=1e-5)
    assert factor == 1.0
    wavelen = 2 * math.pi / plain
    high = wavelen < 8192 / 4.0
    low = wavelen > 8192 / 1.0
    medium = ~high & ~low
    assert high.sum() and low.sum() and medium.sum()  # all three bands exercised
    np.testing.assert_allclose(got[high], plain[high], rtol=1e-6)
    np.testing.assert_allclose(got[low], plain[low] / 8.0, rtol=1e-6)
    # the medium band lies strictly between the scaled and unscaled frequencies
    assert np.all(got[medium] < plain[medium]) and np.all(got[medium] > plain[medium] / 8.0)


def _yarn_reference(r, theta, s, orig, beta_fast, beta_slow, truncate):
    """YaRN (Peng et al., 2023), from the paper's definitions and its reference code.

    Pair d has wavelength lambda_d = 2 pi theta^(2d/R) and makes L / lambda_d rotations over the
    original context L. Pairs that rotate more than beta_fast times keep their frequency
    (extrapolation), pairs that rotate fewer than beta_slow times are divided by s
    (interpolation), and a linear ramp over the pair index d blends the two in between.
    """
    half = r // 2

    def dim_of(rotations):  # solve L / (2 pi theta^(2d/R)) = rotations for d
        return half * math.log(orig / (2 * math.pi * rotations), theta)

    lo, hi = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, r - 1)
    freqs = []
    for d in range(half):
        theta_d = theta ** (-2 * d / r)
        gamma = 1.0 - min(max((d - lo) / (hi - lo), 0.0), 1.0)  # 1 = keep, 0 = interpolate
        freqs.append(gamma * theta_d + (1 - gamma) * theta_d / s)
    mscale = 0.1 * math.log(s) + 1.0
    return np.array(freqs), mscale


@pytest.mark.parametrize("truncate", [True, False])
def test_rope_inv_freq_yarn(truncate):
    r, theta, s, orig = 64, 10000.0, 4.0, 2048
    sc = RopeScaling(
        kind="yarn", factor=s, original_max_position_embeddings=orig, truncate=truncate
    )
    got, attn = rope_inv_freq(r, theta, sc)
    ref, mscale = _yarn_reference(r, theta, s, orig, 32.0, 1.0, truncate)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert attn == pytest.approx(mscale) and attn == pytest.approx(0.1 * math.log(4.0) + 1)
    # band check straight from rotation counts
    plain = theta ** (-np.arange(0, r, 2) / r)
    rotations = orig * plain / (2 * math.pi)
    fast, slow = rotations > 32 + 1, rotations < 1 - 0.1  # away from the rounded edges
    np.testing.assert_allclose(got[fast], plain[fast], rtol=1e-6)
    np.testing.assert_allclose(got[slow], plain[slow] / s, rtol=1e-6)


def test_rope_inv_freq_yarn_attention_factor_variants():
    base = dict(kind="yarn", factor=40.0, original_max_position_embeddings=4096)
    _, attn = rope_inv_freq(64, 10000.0, RopeScaling(**base, attention_factor=0.5))
    assert attn == 0.5
    _, attn = rope_inv_freq(64, 10000.0, RopeScaling(**base, mscale=1.0, mscale_all_dim=0.707))
    expected = (0.1 * 1.0 * math.log(40) + 1) / (0.1 * 0.707 * math.log(40) + 1)
    assert attn == pytest.approx(expected)
    _, attn = rope_inv_freq(
        64,
        10000.0,
        RopeScaling(kind="yarn", factor=1.0, **{"original_max_position_embeddings": 4096}),
    )
    assert attn == 1.0  # no extension, no temperature change


def test_rope_scaling_rejects_unknown_kind():
    with pytest.raises(ValueError, match="dynamic"):
        RopeScaling(kind="dynamic")


@pytest.mark.parametrize("kind", ["yarn", "llama3"])
def test_rope_scaling_needs_original_context(kind):
    # yarn and llama3 are defined relative to the pretraining context; without it the config is
    # accepted today and rope_inv_freq later fails with "NoneType / float" deep inside tracing.
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        RopeScaling(kind=kind, factor=4.0)


# ----------------------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_power_of_two():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)], rtol=1e-7)
    np.testing.assert_allclose(alibi_slopes(4), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8], rtol=1e-7)


def test_alibi_slopes_non_power_of_two():
    # Press et al.'s get_slopes: the 4 slopes of N=4, then every other slope of N=8.
    expected6 = [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    np.testing.assert_allclose(alibi_slopes(6), expected6, rtol=1e-7)
    # N=12: the 8 slopes of N=8, then slopes 1, 3, 5, 7 of N=16 (2^-0.5, 2^-1.5, ...).
    expected12 = [2.0**-i for i in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    np.testing.assert_allclose(alibi_slopes(12), expected12, rtol=1e-6)


@pytest.mark.parametrize("n_heads", [4, 6, 8, 12])
def test_alibi_matches_transformers_build_alibi_tensor(n_heads):
    """BLOOM's bias ``slope * k_pos`` (positions from the mask's cumsum) differs from ours,
    ``slope * (k_pos - q_pos)``, by ``-slope * q_pos``: constant over keys, so softmax drops it."""
    torch = pytest.importorskip("torch")
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])  # row 0 left-padded
    ref = bloom.build_alibi_tensor(torch.as_tensor(mask), n_heads, torch.float32).numpy()
    ref = ref.reshape(2, n_heads, 7)  # [B, N, S]
    slopes = alibi_slopes(n_heads)
    np.testing.assert_allclose(slopes, ref[1, :, 1], rtol=1e-6)  # key position 1: the slope
    pos = np.where(mask > 0, np.cumsum(mask, 1) - 1, -1)
    ours = np.asarray(alibi_bias(jnp.asarray(slopes), jnp.asarray(pos), jnp.asarray(pos)))
    shift = ours - ref[:, :, None, :]  # [B, N, T, S]: -slope * q_pos on the real keys
    want = -slopes[None, :, None] * pos[:, None, :]  # [B, N, T]
    real = mask.astype(bool)
    for b in range(2):
        got = shift[b][..., real[b]]  # [N, T, real keys]
        np.testing.assert_allclose(got, np.broadcast_to(want[b][..., None], got.shape), atol=1e-6)


def test_alibi_bias_sign_and_shape():
    slopes = np.array([0.5, 0.25], np.float32)
    q_pos = jnp.array([[0, 1, 2]])
    k_pos = jnp.array([[0, 1, 2, 3]])
    bias = np.asarray(jax.jit(alibi_bias)(slopes, q_pos, k_pos))
    assert bias.shape == (1, 2, 3, 4)
    for n, m in enumerate(slopes):
        for i in range(3):
            for j in range(4):
                assert bias[0, n, i, j] == pytest.approx(-m * (i - j))
    assert bias[0, 0, 2, 0] < bias[0, 0, 2, 1] < bias[0, 0, 2, 2] == 0  # farther -> more negative


# -------------------------------------------------------------------------------------------- T5

# Hand-computed from Mesh TF's _relative_position_bucket (num_buckets=32, max_distance=128),
# relative_position = key - query. Causal: n = max(q - k, 0), max_exact = 16; a large n maps to
# 16 + floor(ln(n / 16) / ln(8) * 16), capped at 31. E.g. n=20: ln(1.25)/ln(8)*16 = 1.72 -> 17;
# n=32: 16/3 = 5.33 -> 21; n=64: 32/3 = 10.67 -> 26; n >= 128 -> 31.
CAUSAL = {
    0: 0,
    -1: 1,
    -15: 15,
    -16: 16,
    -20: 17,
    -32: 21,
    -64: 26,
    -127: 31,
    -128: 31,
    -1000: 31,
    3: 0,
    100: 0,
}
# Bidirectional: 16 buckets per direction, max_exact = 8, keys after the query add 16.
# n=20: ln(2.5)/ln(16)*8 = 2.64 -> 10; n=50: ln(6.25)/ln(16)*8 = 5.29 -> 13.
BIDIRECTIONAL = {
    0: 0,
    3: 19,
    -3: 3,
    7: 23,
    -7: 7,
    8: 24,
    -8: 8,
    -20: 10,
    20: 26,
    50: 29,
    -50: 13,
    200: 31,
    -200: 15,
}


@pytest.mark.parametrize(
    "bidirectional,table", [(False, CAUSAL), (True, BIDIRECTIONAL)], ids=["causal", "bidir"]
)
def test_t5_buckets_hand_computed(bidirectional, table):
    rel = jnp.array(list(table))
    got = np.asarray(t5_relative_bucket(rel, bidirectional=bidirectional))
    np.testing.assert_array_equal(got, list(table.values()))
    assert got.dtype == np.int32


def test_t5_bias_gathers_table():
    num_buckets, n = 32, 3
    table = jnp.arange(num_buckets * n, dtype=jnp.float32).reshape(num_buckets, n)
    q_pos = jnp.array([[0, 5, 40]])
    k_pos = jnp.array([[0, 5, 40]])
    bias = np.asarray(t5_bias(table, q_pos, k_pos, bidirectional=False))
    assert bias.shape == (1, n, 3, 3)
    # q=40, k=0: n=40 -> 16 + floor(ln(2.5)/ln(8)*16) = 16 + 7 = 23; q=40, k=5: n=35 -> 22
    expected_bucket = np.array([[0, 0, 0], [5, 0, 0], [23, 22, 0]])
    for h in range(n):
        np.testing.assert_array_equal(bias[0, h], np.asarray(table)[expected_bucket, h])
