"""Divergence guard: a non-finite step never changes the state, stops a run, or is skipped."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from llmzoo.cli import main
from llmzoo.config import OptimConfig
from llmzoo.models import decoder
from llmzoo.objectives.losses import token_loss
from llmzoo.presets import get_model_preset
from llmzoo.run_dir import load_params, read_config
from llmzoo.train.optimizer import lr_schedule, make_optimizer
from llmzoo.train.step import TrainState, all_finite, make_steps

CFG = dataclasses.replace(get_model_preset("gpt2-tiny"), n_layers=2, d_model=32, n_heads=4, d_ff=64)
# Adam at lr 1e4 with clipping off blows a tiny GPT-2 up within a few steps (step 5 on CPU).
DIVERGING = ["optim.lr=1e4", "optim.clip_norm=1e9", "optim.warmup_steps=1", "steps=20"]


# ---- the step, with an objective that can be poisoned per batch ----


@jax.custom_vjp
def _nan_grad_if(x, flag):
    return x


def _nan_grad_fwd(x, flag):
    return x, flag


def _nan_grad_bwd(flag, g):
    return jnp.where(flag > 0, jnp.nan, g), jnp.zeros_like(flag)


_nan_grad_if.defvjp(_nan_grad_fwd, _nan_grad_bwd)


def poisoned_loss(params, batch, rng, *, cfg):
    """token_loss, but where ``batch['poison'] [B]`` is set: a NaN loss (1) or NaN grads (2)."""
    loss_sum, count, sums = token_loss(params, batch, rng, cfg=cfg)
    poison = batch["poison"].max()
    loss_sum = jnp.where(poison == 1, jnp.nan, loss_sum)
    return _nan_grad_if(loss_sum, (poison == 2).astype(jnp.float32)), count, sums


def make_batch(poison=0, b=8, t=16, seed=0):
    toks = np.random.default_rng(seed).integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    return {
        "tokens": toks[:, :-1],
        "targets": toks[:, 1:],
        "segment_ids": np.ones((b, t), np.int32),
        "positions": np.arange(t, dtype=np.int32)[None].repeat(b, 0),
        "loss_mask": np.ones((b, t), np.float32),
        "poison": np.asarray(poison, np.int32).repeat(b // np.size(poison)),
    }


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


@pytest.mark.parametrize("poison, grad_accum", [(1, 1), (2, 1), ([0, 2], 2)])
def test_non_finite_step_leaves_state_unchanged(poison, grad_accum):
    """NaN loss, NaN grads, or NaN grads in one of two micro-batches: the update is skipped."""
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), 10, decoder.param_specs(CFG))
    train_fn, _ = make_steps(poisoned_loss, CFG, tx, grad_accum)
    init = host_copy(decoder.init(jax.random.key(0), CFG))

    def fresh():  # a new copy each time: the step donates its state
        params = jax.tree.map(jnp.asarray, init)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    key = jax.random.key(0)
    before = host_copy(fresh())

    state, m = train_fn(fresh(), make_batch(poison), key)
    assert int(state.step) == 1 and float(m["skipped"]) == 1.0 and float(m["finite"]) == 0.0
    assert not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"])))
    after = host_copy(state)
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)

    # A clean step then updates exactly as from the start: the skipped step left no trace.
    state, m = train_fn(state, make_batch(0), key)
    assert int(state.step) == 2 and float(m["skipped"]) == 0.0 and float(m["finite"]) == 1.0
    clean, _ = train_fn(fresh(), make_batch(0), key)
    jax.tree.map(np.testing.assert_array_equal, host_copy(state.params), host_copy(clean.params))
    assert not np.array_equal(state.params["embed"]["table"], before.params["embed"]["table"])
    assert bool(all_finite((state.params, state.opt_state)))
    assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])}))


# ---- the loop, through the CLI ----


def train(args, run_dir, capsys):
    rc = main(["train", "--no-progress", *args, f"run_dir={run_dir}"])
    return rc, capsys.readouterr().err.strip().splitlines()


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def checkpoint_steps(run_dir):
    return sorted(int(s) for s in os.listdir(os.path.join(run_dir, "checkpoints")) if s.isdigit())


def checkpoint_params(run_dir, step):
    """The params of checkpoint ``step`` of ``run_dir``, read by Orbax's standard checkpointer."""
    _, newest, _ = load_params(run_dir)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), newest
    )
    path = os.path.join(run_dir, "checkpoints", str(step), "params")
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, abstract)


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory, tiny_run_args):
    """The diverging config with on_nan=skip_step: the per-step losses, logged every step."""
    run_dir = tmp_path_factory.mktemp("div") / "skip"
    rc = main(["train", "--no-progress", *tiny_run_args, *DIVERGING, "on_nan=skip_step",
               "steps=12", "ckpt_every=6", f"run_dir={run_dir}"])  # fmt: skip
    return rc, run_dir


def first_non_finite(recs):
    bad = [
        r["step"] for r in recs if not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]))
    ]
    return bad[0] if bad else None


def test_skip_step_counts_skipped_steps_and_finishes(skip_run):
    rc, run_dir = skip_run
    assert rc == 0
    recs = records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, 13))
    n = first_non_finite(recs)
    assert n is not None and n <= 10, "the config no longer diverges; raise optim.lr"
    # skipped_steps counts exactly the steps whose loss or gradient norm was not finite
    counted = 0
    for r in recs:
        counted += not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]))
        assert r["skipped_steps"] == counted
    assert counted >= 1
    for step in checkpoint_steps(run_dir):
        assert bool(all_finite(checkpoint_params(run_dir, step)))


def test_skipped_steps_do_not_advance_the_logged_lr(skip_run):
    """The logged lr is the optimizer's: its schedule counts applied updates only."""
    _, run_dir = skip_run
    cfg = read_config(str(run_dir))
    schedule = lr_schedule(cfg.optim, cfg.steps)
    recs = records(run_dir)
    assert recs[-1]["skipped_steps"] >= 1
    for r in recs:
        applied_before = r["step"] - 1 - r["skipped_steps"]
        assert r["lr"] == pytest.approx(float(schedule(max(applied_before, 0))), rel=1e-6)


def test_stop_names_the_step_and_keeps_only_finite_checkpoints(
    skip_run, tiny_run_args, tmp_path, capsys
):
    """Every step a log and checkpoint step: stop right after step N, keep N-2 and N-1."""
    n = first_non_finite(records(skip_run[1]))
    run_dir = tmp_path / "stop"
    args = [*tiny_run_args, *DIVERGING, "ckpt_every=1", "keep_checkpoints=2"]
    rc, err = train(args, run_dir, capsys)
    assert rc == 2
    assert err[-1] == (
        f"error: training diverged at step {n}: the loss or gradient norm is not finite; "
        f"the newest checkpoint (step {n - 1}) is the last finite state; lower optim.lr "
        "(now 10000.0) or set on_nan=skip_step"
    )
    assert checkpoint_steps(run_dir) == [n - 2, n - 1]  # without the guard: [19, 20], NaN
    assert max(r["step"] for r in records(run_dir)) == n - 1
    for step in (n - 2, n - 1):
        assert bool(all_finite(checkpoint_params(run_dir, step)))

    # Flags checked only every 4 steps: the same first step is named, nothing saved after it.
    late = tmp_path / "late"
    rc, err = train([*args[:-2], "ckpt_every=4", "log_every=4"], late, capsys)
    newest = (n - 1) // 4 * 4
    assert rc == 2 and f"diverged at step {n}:" in err[-1]
    assert f"newest checkpoint (step {newest})" in err[-1]
    assert checkpoint_steps(late)[-1] == newest
    if newest in (n - 2, n - 1):  # the same trajectory: bitwise the same checkpoint
        jax.tree.map(
            np.testing.assert_array_equal,
            checkpoint_params(late, newest),
            checkpoint_params(run_dir, newest),
        )
