"""The one matmul helper: plain weights are one 2-D matmul with the einsum's values; LoRA leaves
compute x W + s x A B."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.layers import attention, linear

SPECS = [
    ("btd,dnh->btnh", (2, 3, 8), (8, 2, 4)),
    ("btf,fd->btd", (2, 3, 6), (6, 8)),
    ("...i,io->...o", (2, 3, 8), (8, 5)),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("spec,x_shape,w_shape", SPECS)
def test_plain_weight_is_one_2d_matmul_with_the_einsums_values_and_gradients(
    spec, x_shape, w_shape, dtype
):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    cot = jnp.asarray(rng.standard_normal(jnp.einsum(spec, x, w).shape), dtype)
    ref = lambda x, w: jnp.einsum(spec, x, w.astype(x.dtype))  # noqa: E731
    out, vjp = jax.vjp(lambda x, w: linear.einsum(spec, x, w), x, w)
    out_ref, vjp_ref = jax.vjp(ref, x, w)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(out, np.float32), out_ref.astype(jnp.float32), rtol=tol)
    for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol
        )
    jaxpr = jax.make_jaxpr(lambda x, w: linear.einsum(spec, x, w))(x, w).jaxpr
    (dot,) = [e for e in _eqns(jaxpr) if e.primitive.name == "dot_general"]
    assert [v.aval.ndim for v in dot.invars] == [2, 2]


def _eqns(jaxpr):
    """The equations of ``jaxpr``, and of the jaxprs inside them (``jax.checkpoint``'s ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in eqn.params.values():
            if hasattr(sub, "jaxpr"):  # a ClosedJaxpr
                sub = sub.jaxpr
            if hasattr(sub, "eqns"):
                yield from _eqns(sub)


def _instructions(hlo: str) -> list[str]:
    """The compiled program's instructions, without metadata, with names numbered in order."""
    lines = [ln.strip() for ln in hlo.splitlines()]
    lines = [
        re.sub(r", metadata=\{[^}]*\}", "", ln) for ln in lines if ln.startswith(("%", "ROOT"))
    ]
    names: dict[str, str] = {}
    rename = lambda m: names.setdefault(m.group(0), f"%{len(names)}")  # noqa: E731
    return [re.sub(r"%[\w.-]+", rename, ln) for ln in lines]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_out_projection_compiles_as_before(dtype):
    o, wo = jnp.ones((2, 3, 4, 8), dtype), jnp.ones((4, 8, 16), jnp.float32)

    def before(o, wo):  # the projection before the helper existed
        b, t, n, h = o.shape
        return (o.reshape(b * t, n * h) @ wo.astype(o.dtype).reshape(n * h, -1)).reshape(b, t, -1)

    def after(o, wo):
        return attention.out_projection({"wo": wo}, o)

    compiled = [_instructions(jax.jit(f).lower(o, wo).compile().as_text()) for f in (before, after)]
    assert compiled[0] == compiled[1]


def _lora(w, n_in, r, rng, scale):
    a = rng.standard_normal((*w.shape[:n_in], r)).astype(np.float32)
    b = rng.standard_normal((r, *w.shape[n_in:])).astype(np.float32)
    return linear.LoraWeight(jnp.asarray(w), jnp.asarray(a), jnp.asarray(b), scale=scale), a, b


def test_lora_weight_is_base_plus_scaled_low_rank_product():
    rng = np.random.default_rng(0)
    o = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    wo = rng.standard_normal((4, 8, 16)).astype(np.float32)
    lw, a, b = _lora(wo, 2, 3, rng, scale=0.5)
    want = o.reshape(6, 32) @ (wo.reshape(32, 16) + 0.5 * a.reshape(32, 3) @ b)
    got = attention.out_projection({"wo": lw}, jnp.asarray(o))
    np.testing.assert_allclose(np.asarray(got).reshape(6, 16), want, rtol=1e-5, atol=1e-5)
    want_w = wo + 0.5 * np.einsum("nhr,rd->nhd", a, b)
    np.testing.assert_allclose(np.asarray(lw.merged()), want_w, rtol=1e-6, atol=1e-6)


def test_base_gets_no_gradient_and_adapters_do():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 3, 8)).astype(np.float32))
    lw, _, _ = _lora(rng.standard_normal((8, 2, 4)).astype(np.float32), 1, 2, rng, scale=2.0)
    grads = jax.grad(lambda w: jnp.sum(linear.einsum("btd,dnh->btnh", x, w) ** 2))(lw)
    assert float(jnp.abs(grads.w).max()) == 0.0
    assert float(jnp.abs(grads.a).max()) > 0 and float(jnp.abs(grads.b).max()) > 0


def test_adapter_dropout_scales_kept_inputs():
    x = jnp.ones((1, 64, 8))
    w = jnp.zeros((8, 4))  # the base contributes nothing: the output is the adapter path alone
    a, b = jnp.eye(8, 2), jnp.ones((2, 4))
    lw = linear.LoraWeight(w, a, b, jax.random.key(0), scale=1.0, dropout=0.5)
    out = np.asarray(linear.einsum("btd,do->bto", x, lw))[0, :, 0]
    # each output is x0 + x1 after dropout: 0, 2 or 4 (kept inputs are scaled by 1 / 0.5)
    assert set(np.unique(out)) == {0.0, 2.0, 4.0}
