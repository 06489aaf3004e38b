"""Mixed precision, remat policies and compile time of the train step.

bfloat16 compute with float32 params keeps params, gradients and optimizer state in float32 and
lands within 2% of the float32 loss on a tiny model (bfloat16 keeps 8 significant bits, so each
activation is rounded by up to 2**-9 relative; over two blocks and a 512-way softmax that is a few
tenths of a percent in practice). The remat policies recompute the same values: loss and
gradients agree with no remat to 1e-6. Layers are scanned, so compile time barely grows with
depth.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.config import OptimConfig
from llmzoo.config_io import apply_overrides
from llmzoo.errors import ConfigError
from llmzoo.models import decoder
from llmzoo.objectives.losses import cross_entropy, token_loss
from llmzoo.presets import get_model_preset
from llmzoo.train.optimizer import make_optimizer
from llmzoo.train.step import TrainState, make_steps

CFG = dataclasses.replace(
    get_model_preset("gpt2-tiny"), n_layers=2, d_model=32, n_heads=4, d_ff=64, dtype="float32"
)


def make_batch(b=4, t=16, seed=0):
    toks = np.random.default_rng(seed).integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    return {
        "tokens": toks[:, :-1],
        "targets": toks[:, 1:],
        "loss_mask": np.ones((b, t), np.float32),
    }


def loss_and_grads(params, cfg, batch):
    def mean_loss(p):
        loss_sum, count, _ = token_loss(p, batch, None, cfg=cfg)
        return loss_sum / count

    return jax.jit(jax.value_and_grad(mean_loss))(params)


def test_bf16_compute_keeps_f32_params_and_grads():
    params = decoder.init(jax.random.key(0), CFG)
    batch = make_batch()
    l32, _ = loss_and_grads(params, CFG, batch)
    bf16 = dataclasses.replace(CFG, dtype="bfloat16")
    l16, grads = loss_and_grads(params, bf16, batch)
    assert float(l16) == pytest.approx(float(l32), rel=2e-2)
    assert float(l16) != float(l32)  # the bfloat16 path did run
    for leaf in jax.tree.leaves(grads):
        assert leaf.dtype == jnp.float32
    logits = decoder.apply(params, batch, cfg=bf16)["logits"]
    assert logits.dtype == jnp.bfloat16  # logits in the compute dtype; the loss upcasts

    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10, decoder.param_specs(bf16))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    train_fn, _ = make_steps(token_loss, bf16, tx, 1)
    state, metrics = train_fn(state, batch, jax.random.key(0))
    assert float(metrics["finite"]) == 1.0
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32)


def test_param_dtype_sets_storage_dtype():
    cfg = dataclasses.replace(CFG, param_dtype="bfloat16")
    params = decoder.init(jax.random.key(0), cfg)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert float(loss_and_grads(params, cfg, make_batch())[0]) > 0
    with pytest.raises(ConfigError, match="model.param_dtype='int8'"):
        dataclasses.replace(CFG, param_dtype="int8")


def test_dtype_auto_is_float32_on_cpu():
    cfg = dataclasses.replace(CFG, dtype="auto")
    assert jax.default_backend() == "cpu" and cfg.compute_dtype == jnp.float32
    assert dataclasses.replace(CFG, dtype="bfloat16").compute_dtype == jnp.bfloat16


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_policy_same_loss_and_grads(policy):
    params = decoder.init(jax.random.key(0), CFG)
    batch = make_batch()
    l0, g0 = loss_and_grads(params, CFG, batch)
    l1, g1 = loss_and_grads(params, dataclasses.replace(CFG, remat=policy), batch)
    assert float(l1) == pytest.approx(float(l0), abs=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_remat_reads_old_booleans_and_rejects_unknown():
    assert apply_overrides(CFG, {"remat": True}).remat == "full"
    assert apply_overrides(CFG, {"remat": False}).remat == "none"
    assert apply_overrides(CFG, {"remat": "dots_saveable"}).remat == "dots_saveable"
    with pytest.raises(ConfigError, match="model.remat='some'"):
        apply_overrides(CFG, {"remat": "some"})


def compile_seconds(n_layers: int) -> float:
    """Lower + compile time of the full train step (fresh trace each call)."""
    cfg = dataclasses.replace(CFG, n_layers=n_layers, d_model=16, n_heads=2, d_ff=32)
    specs = decoder.param_specs(cfg)
    tx = make_optimizer(OptimConfig(), 10, specs)
    params = jax.eval_shape(lambda: decoder.init(jax.random.key(0), cfg))
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(tx.init, params),
    )
    train_fn, _ = make_steps(token_loss, cfg, tx, 1)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_batch(2, 8))
    t0 = time.perf_counter()
    train_fn.lower(state, batch, jax.random.key(0)).compile()
    return time.perf_counter() - t0


@pytest.fixture
def no_compile_cache():
    """Real compiles: the persistent cache the suite shares would serve repeats from disk."""
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)


@pytest.mark.usefixtures("no_compile_cache")
def test_compile_time_flat_in_depth():
    shallow = min(compile_seconds(2) for _ in range(2))  # the first also warms shared caches
    deep = min(compile_seconds(24) for _ in range(2))
    assert deep < 2 * shallow, (shallow, deep)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_nll_gradient_is_softmax_minus_one_hot(dtype):
    """The written-out gradient of the loss equals autodiff's of ``-log_softmax[target]``."""
    logits = jnp.asarray(3 * np.random.default_rng(0).standard_normal((3, 5, 40)), dtype)
    targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 40)
    weights = jax.random.uniform(jax.random.key(2), (3, 5))

    def plain(x):
        logp = jax.nn.log_softmax(x.astype(jnp.float32))
        return -(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum()

    got = jax.grad(lambda x: cross_entropy(x, targets, weights)[0])(logits)
    want = jax.grad(plain)(logits)
    assert got.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=tol)
    assert float(cross_entropy(logits, targets, weights)[0]) == pytest.approx(
        float(plain(logits)), rel=1e-6
    )
