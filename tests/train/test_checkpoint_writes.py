"""Checkpoint writes in one process: an array replicated over several devices is written whole by
one replica, not split into a slice per replica (Orbax's replica-parallel saving), which costs a
compiled slice program per replica and shape and spreads no work when every replica is local."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from llmzoo import run_dir as ckpt

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax's event per compiled program


@pytest.fixture
def replicated():
    """Returns ``make(rows, cols)``: a float32 array of that shape replicated over 8 devices."""
    if jax.device_count() != 8:
        pytest.skip(f"needs 8 devices (conftest forces 8 CPU devices), got {jax.device_count()}")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    on_all = NamedSharding(mesh, PartitionSpec())

    def make(rows, cols):
        return jax.device_put(np.arange(rows * cols, dtype=np.float32).reshape(rows, cols), on_all)

    return make


def _compiles_during(fn) -> int:
    """How many programs JAX compiles while ``fn()`` runs."""
    events = []

    def listen(event, _duration, **_):
        if event == BACKEND_COMPILE:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(events)


def test_replicated_arrays_save_whole_without_compiling(tmp_path, replicated):
    # Shapes no other test uses: a slice program compiled earlier in the process would hide one.
    params = {"w": replicated(8, 40), "b": replicated(16, 24)}
    mngr = ckpt.checkpoint_manager(str(tmp_path / "run"), async_save=False)
    assert _compiles_during(lambda: ckpt.save(mngr, 1, params)) == 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
    step, restored, _, _ = ckpt.restore_latest(mngr, abstract)
    assert step == 1
    for name, x in params.items():
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(x))
        assert restored[name].sharding == x.sharding


def test_orbax_default_splits_the_write_over_the_replicas(tmp_path, replicated):
    """The reference: Orbax's own handler compiles slice programs for the same kind of save."""
    params = {"w": replicated(8, 56), "b": replicated(16, 40)}
    mngr = ocp.CheckpointManager(tmp_path / "plain", item_names=("params",))
    save = lambda: mngr.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))  # noqa: E731
    assert _compiles_during(save) > 0
    mngr.wait_until_finished()
    mngr.close()
