"""Norms and MLP blocks against numpy formulas (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.layers.mlp import mlp, mlp_specs
from llmzoo.layers.norms import apply_norm, layer_norm, norm_specs, rms_norm
from llmzoo.params import init_params

_erf = np.vectorize(math.erf)


def _gelu_exact(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x):
    return x / (1 + np.exp(-x))


def _relu(x):
    return np.maximum(x, 0)


@pytest.fixture
def x():
    rng = np.random.default_rng(0)
    return (3 * rng.standard_normal((2, 5, 16)) + 1.5).astype(np.float32)


def test_layer_norm_matches_formula(x):
    rng = np.random.default_rng(1)
    params = {"scale": rng.standard_normal(16), "bias": rng.standard_normal(16)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    got = jax.jit(layer_norm, static_argnames="eps")(params, x, eps=1e-5)
    xd = x.astype(np.float64)
    mu = xd.mean(-1, keepdims=True)
    var = ((xd - mu) ** 2).mean(-1, keepdims=True)  # biased variance, as in Ba et al.
    expected = (xd - mu) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    # without a bias param there is no shift
    no_bias = jax.jit(layer_norm)({"scale": params["scale"]}, x)
    np.testing.assert_allclose(no_bias, expected - params["bias"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("zero_centered", [False, True])
def test_rms_norm_matches_formula(x, zero_centered):
    scale = np.random.default_rng(2).standard_normal(16).astype(np.float32)
    fn = jax.jit(rms_norm, static_argnames=("eps", "zero_centered"))
    got = fn({"scale": scale}, x, eps=1e-6, zero_centered=zero_centered)
    xd = x.astype(np.float64)
    rms = np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-6)  # no mean subtraction
    w = 1.0 + scale if zero_centered else scale
    np.testing.assert_allclose(got, xd / rms * w, atol=1e-5, rtol=1e-5)


def test_norm_specs_and_dispatch(x):
    ln = norm_specs(16, "layernorm")
    rms = norm_specs(16, "rmsnorm")
    assert set(ln) == {"scale", "bias"} and set(rms) == {"scale"}
    assert set(norm_specs(16, "layernorm", bias=False)) == {"scale"}
    # zero-centred scale initialises to zeros, so 1 + scale = 1: the same output as ones
    p_zc = init_params(jax.random.key(0), norm_specs(16, "rmsnorm", zero_centered=True))
    p_one = init_params(jax.random.key(0), rms)
    np.testing.assert_array_equal(p_zc["scale"], 0.0)
    np.testing.assert_array_equal(p_one["scale"], 1.0)
    a = apply_norm(p_zc, x, kind="rmsnorm", eps=1e-6, zero_centered=True)
    b = apply_norm(p_one, x, kind="rmsnorm", eps=1e-6)
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="batchnorm"):
        apply_norm(p_one, x, kind="batchnorm", eps=1e-6)


def test_norm_bf16_input_keeps_dtype(x):
    out = layer_norm({"scale": jnp.ones(16)}, jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16


PLAIN = {"gelu": _gelu_exact, "gelu_tanh": _gelu_tanh, "relu": _relu, "silu": _silu}
GATED = {"swiglu": _silu, "geglu": _gelu_tanh, "geglu_exact": _gelu_exact}


@pytest.mark.parametrize("kind", [*PLAIN, *GATED])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_matches_formula(kind, bias, x):
    d, f = 16, 24
    specs = mlp_specs(d, f, kind, bias=bias)
    rng = np.random.default_rng(3)
    params = {k: (0.3 * rng.standard_normal(s.shape)).astype(np.float32) for k, s in specs.items()}
    got = jax.jit(mlp, static_argnames="kind")(params, x, kind=kind)
    xd = x.astype(np.float64)
    up = xd @ params["w_up"] + params.get("b_up", 0.0)
    if kind in GATED:
        assert "w_gate" in params
        gate = xd @ params["w_gate"] + params.get("b_gate", 0.0)
        h = GATED[kind](gate) * up  # act(x W_gate) * (x W_up), Shazeer (2020)
    else:
        assert "w_gate" not in params
        h = PLAIN[kind](up)
    expected = h @ params["w_down"] + params.get("b_down", 0.0)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5)


def test_gelu_variants_differ():
    # guards against gelu and gelu_tanh being wired to the same function
    params = {"w_up": np.eye(4, dtype=np.float32), "w_down": np.eye(4, dtype=np.float32)}
    x = jnp.full((1, 1, 4), 1.7, jnp.float32)
    exact = mlp(params, x, kind="gelu")
    approx = mlp(params, x, kind="gelu_tanh")
    assert float(jnp.abs(exact - approx).max()) > 1e-6
    np.testing.assert_allclose(exact, _gelu_exact(np.full((1, 1, 4), 1.7)), atol=1e-6)


def test_mlp_specs_unknown_kind():
    with pytest.raises(ValueError, match="swish"):
        mlp_specs(4, 8, "swish", bias=False)
