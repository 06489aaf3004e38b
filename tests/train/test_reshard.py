"""Checkpoint resharding: params saved on one mesh restore bit-exactly onto another, directly
through the run directory and through the training loop's resume (the mesh keys may change)."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest

from llmzoo import run_dir as ckpt
from llmzoo import sharding
from llmzoo.models import decoder
from llmzoo.objectives import registry as objectives
from llmzoo.presets import get_model_preset, resolve_train_config, train_config_for
from llmzoo.train.loop import _restore, train
from llmzoo.train.setup import initial_state, layout

CFG = dataclasses.replace(get_model_preset("llama-tiny"), n_heads=8, d_model=64)
# (fsdp, tensor) sizes: saved on the first, restored on the others
SAVED, TARGETS = (4, 2), [(8, 1), (2, 4)]


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip(f"needs 8 devices (conftest forces 8 CPU devices), got {jax.device_count()}")


def _shardings(fsdp, tensor, cfg=CFG):
    mesh = sharding.make_mesh(1, fsdp, tensor)
    return sharding.param_shardings(decoder.param_specs(cfg), mesh)


def _assert_equal_on(restored, saved, shardings):
    jax.tree.map(lambda a, s: np.testing.assert_array_equal(np.asarray(a), s), restored, saved)
    same = jax.tree.map(lambda a, s: a.sharding == s, restored, shardings)
    assert all(jax.tree.leaves(same))


def test_run_dir_restores_onto_other_meshes(tmp_path):
    params = decoder.init(jax.random.key(0), CFG, _shardings(*SAVED))
    saved = jax.tree.map(np.asarray, params)
    run = str(tmp_path / "run")
    ckpt.write_run(run, train_config_for(CFG), params)
    for target in TARGETS:
        shardings = _shardings(*target)
        _, restored, step = ckpt.load_params(run, shardings=shardings)
        assert step == 0
        _assert_equal_on(restored, saved, shardings)


class _Input:  # the loop's input, for its data position only
    def restore(self, record):
        self.record = record


def _args(tiny_run_args, run_dir, fsdp, tensor):
    mesh = ["strategy=fsdp+tp", f"mesh_fsdp={fsdp}", f"mesh_tensor={tensor}"]
    steps = ["steps=3", "eval_every=100", "ckpt_every=100"]
    return [*tiny_run_args, "model.n_heads=4", f"run_dir={run_dir}", *steps, *mesh]


def test_training_resumes_on_other_meshes(tmp_path, tiny_run_args):
    """2 steps on (fsdp 4, tensor 2); the loop restores them exactly on (8, 1) and (2, 4), and
    each goes on to the same third step."""
    saved_run = tmp_path / "saved"
    cfg = resolve_train_config(None, _args(tiny_run_args, saved_run, *SAVED))
    train(cfg, stop_at=2, progress=False, log=lambda _: None)
    _, saved, _ = ckpt.load_params(str(saved_run))
    saved = jax.tree.map(np.asarray, saved)
    third = []
    for fsdp, tensor in TARGETS:
        run_dir = tmp_path / f"on_{fsdp}x{tensor}"
        shutil.copytree(saved_run, run_dir)
        cfg = resolve_train_config(None, _args(tiny_run_args, run_dir, fsdp, tensor))
        mesh, _, p_shard = layout(cfg)
        objective = objectives.for_config(cfg)
        state, _, _ = initial_state(cfg, objective, mesh, p_shard, lambda _: None)
        with ckpt.training_checkpoints(str(run_dir)) as mngr:
            state, start = _restore(mngr, state, _Input(), lambda _: None, run_dir)
        assert start == 2
        _assert_equal_on(state.params, saved, p_shard)
        lines = []
        summary = train(cfg, progress=False, log=lines.append)
        assert summary["step"] == 3 and f"resumed from step 2 in {run_dir}" in lines
        third.append(_losses(run_dir)[3])
    np.testing.assert_allclose(third[0], third[1], rtol=1e-5)


def _losses(run_dir):
    import json

    with open(run_dir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
