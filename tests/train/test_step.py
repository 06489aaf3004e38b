"""Train step, optimizer and sharded training: gradient accumulation, masks, schedule, meshes."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmzoo import sharding
from llmzoo.config import OptimConfig
from llmzoo.models import decoder
from llmzoo.objectives.losses import token_loss
from llmzoo.presets import get_model_preset
from llmzoo.train.optimizer import decay_mask, lr_schedule, make_optimizer
from llmzoo.train.step import TrainState, make_steps, summed_grads

CFG = dataclasses.replace(get_model_preset("gpt2-tiny"), n_layers=2, d_model=32, n_heads=8, d_ff=64)


def make_batch(b=8, t=16, seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[:, t // 2 :] = 2  # two packed documents per row
    pos = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)])[None].repeat(b, 0)
    mask = np.ones((b, t), np.float32)
    mask[:, t // 2 - 1] = 0  # no target across the boundary
    return {
        "tokens": toks[:, :-1],
        "targets": toks[:, 1:],
        "segment_ids": seg,
        "positions": pos.astype(np.int32),
        "loss_mask": mask,
    }


def fresh_state(tx, shardings=None):
    params = decoder.init(jax.random.key(0), CFG, shardings)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def run(steps, grad_accum=1, mesh=None):
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10, decoder.param_specs(CFG))
    if mesh is None:
        state = fresh_state(tx)
        train_fn, _ = make_steps(token_loss, CFG, tx, grad_accum)
        put = lambda b: b  # noqa: E731
    else:
        state = fresh_state(tx, sharding.param_shardings(decoder.param_specs(CFG), mesh))
        train_fn, _ = make_steps(token_loss, CFG, tx, grad_accum)
        put = lambda b: jax.device_put(b, sharding.batch_sharding(mesh))  # noqa: E731
    losses = []
    for i in range(steps):
        if mesh is None:
            state, m = train_fn(state, put(make_batch(seed=i)), jax.random.key(0))
        else:
            with jax.set_mesh(mesh):
                state, m = train_fn(state, put(make_batch(seed=i)), jax.random.key(0))
        losses.append(float(m["loss"]))
    return losses, state


def test_gradient_accumulation_matches_one_big_batch():
    one, s1 = run(3, grad_accum=1)
    acc, s2 = run(3, grad_accum=4)
    np.testing.assert_allclose(acc, one, rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), s1.params, s2.params)


def test_single_micro_batch_skips_the_scan_with_the_same_result():
    """grad_accum=1 runs one value_and_grad; it equals the scan over one micro-batch with a
    zero carry (the previous code), dropout key ``fold_in(rng, 0)`` included."""
    cfg = dataclasses.replace(CFG, dropout=0.1)
    params, batch, rng = decoder.init(jax.random.key(0), cfg), make_batch(), jax.random.key(3)
    grad_fn = jax.value_and_grad(lambda p, mb, r: token_loss(p, mb, r, cfg=cfg)[0])

    def scanned(params, batch):
        def body(acc, mb):
            loss, grads = grad_fn(params, mb, jax.random.fold_in(rng, 0))
            return jax.tree.map(jnp.add, acc, (grads, loss)), None

        zeros = jax.tree.map(jnp.zeros_like, (params, jnp.zeros(())))
        return jax.lax.scan(body, zeros, jax.tree.map(lambda x: x[None], batch))[0]

    fast = jax.jit(
        lambda p, b: summed_grads(p, b, rng, objective=token_loss, cfg=cfg, grad_accum=1)
    )(params, batch)
    ref_grads, ref_loss = jax.jit(scanned)(params, batch)
    assert float(fast[1]) == pytest.approx(float(ref_loss), rel=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), fast[0], ref_grads
    )


@functools.cache
def reference_two_steps():
    return run(2)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_sharded_training_matches_single_device(shape):
    """Data parallel, FSDP and tensor parallel give the same losses and params."""
    mesh = sharding.make_mesh(*shape)
    ref, s_ref = reference_two_steps()
    got, s_got = run(2, mesh=mesh)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    wq = s_got.params["layers"]["attn"]["wq"]
    if shape[2] > 1:  # heads axis of wq [L, D, N, H] is split over 'tensor'
        assert wq.sharding.spec[2] == "tensor"
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), s_ref.params, s_got.params
    )


def test_weight_decay_skips_norms_and_biases():
    mask = decay_mask(decoder.param_specs(CFG))
    assert mask["layers"]["attn"]["wq"] and mask["layers"]["mlp"]["w_up"]
    assert mask["embed"]["table"]
    assert not mask["layers"]["attn_norm"]["scale"] and not mask["layers"]["attn"]["bq"]
    assert not mask["layers"]["mlp"]["b_up"] and not mask["final_norm"]["bias"]
    assert mask["pos_embed"]["table"] and not mask["layers"]["attn"]["bo"]


def test_decay_applies_only_to_masked_params():
    cfg = OptimConfig(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=1e9)
    specs = decoder.param_specs(CFG)
    tx = make_optimizer(cfg, 10, specs)
    params = decoder.init(jax.random.key(0), CFG)

    @jax.jit  # one program: run eagerly, AdamW's ops compile one by one per leaf shape
    def decayed(params):
        zeros = jax.tree.map(jnp.zeros_like, params)  # zero gradients: only decay moves params
        updates, _ = tx.update(zeros, tx.init(params), params)
        return optax.apply_updates(params, updates)

    new = decayed(params)
    scale = new["layers"]["attn_norm"]["scale"]
    np.testing.assert_array_equal(scale, params["layers"]["attn_norm"]["scale"])
    np.testing.assert_allclose(
        new["layers"]["attn"]["wq"], params["layers"]["attn"]["wq"] * (1 - 0.1 * 0.5), rtol=1e-6
    )


def test_schedule_warmup_then_cosine():
    s = lr_schedule(OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 110)
    assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
    mid = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 50 / 100))
    assert abs(float(s(60)) - mid) < 1e-5
    assert abs(float(s(110)) - 0.1) < 1e-6
