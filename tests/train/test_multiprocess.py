"""Multi-process training: 2 processes x 4 CPU devices under ``jax.distributed`` train exactly
as one process with 8 devices, save one checkpoint together, and that checkpoint resumes in one
process; the data shards, their checkpointed positions and the launch variables fail clearly."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.data.shards import ShardedIterator, position_record, read_position_record
from llmzoo.errors import ConfigError, DataError
from llmzoo.presets import resolve_train_config
from llmzoo.train.inputs import shard_layout
from llmzoo.train.loop import train
from llmzoo.train.metrics import read_metrics

MULTI = ["strategy=fsdp", "data.shards=2", "steps=4", "eval_every=4", "ckpt_every=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(args: list[str], n: int = 2) -> list[subprocess.CompletedProcess]:
    """Runs ``llmzoo train args`` as ``n`` processes of 8 / n CPU devices each on localhost."""
    port, procs = _free_port(), []
    for i in range(n):
        env = os.environ | {
            "XLA_FLAGS": re.sub(
                r"device_count=\d+", f"device_count={8 // n}", os.environ["XLA_FLAGS"]
            ),
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": str(n),
            "JAX_PROCESS_ID": str(i),
        }
        cmd = [sys.executable, "-m", "llmzoo", "train", "--no-progress", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(
            subprocess.CompletedProcess(p.args, p.returncode, stdout.decode(), stderr.decode())
        )
    return out


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(str(run_dir)) if "loss" in r}


@pytest.mark.slow
def test_two_processes_train_save_and_resume_like_one(tmp_path, tiny_run_args):
    if jax.device_count() != 8:
        pytest.skip("needs the 8 forced CPU devices of conftest")
    ref = train(
        resolve_train_config(None, [*tiny_run_args, *MULTI, f"run_dir={tmp_path / 'one'}"]),
        progress=False,
        log=lambda *a: None,
    )
    two = tmp_path / "two"
    procs = _launch([*tiny_run_args, *MULTI, f"run_dir={two}", "--stop-at", "2"])
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    # Process 0 prints (gloo, the CPU collectives library, prints its connections on both).
    assert "run directory" in procs[0].stdout and "run directory" not in procs[1].stdout
    # One checkpoint, saved together: process 1's shards' data positions are in it too.
    assert sorted(os.listdir(two / "checkpoints")) == ["2"]
    meta = json.loads((two / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert len(meta["data"]["llmzoo_shards"]) == 2
    # Resume the two-process checkpoint in this one process (8 devices) to the end.
    resumed = train(
        resolve_train_config(None, [*tiny_run_args, *MULTI, f"run_dir={two}"]),
        progress=False,
        log=lambda *a: None,
    )
    one, both = _losses(tmp_path / "one"), _losses(two)
    assert sorted(both) == [1, 2, 3, 4]
    np.testing.assert_allclose([both[s] for s in both], [one[s] for s in both], atol=1e-5)
    assert abs(resumed["val_loss"] - ref["val_loss"]) < 1e-5


def test_sharded_iterator_concatenates_shards_and_round_trips_positions():
    class Counter:  # a checkpointable iterator of [2, 1] batches
        def __init__(self, shard):
            self.shard, self.n = shard, 0

        def __next__(self):
            self.n += 1
            return {"x": np.full((2, 1), 10 * self.shard + self.n)}

        def get_state(self):
            return {"n": self.n}

        def set_state(self, state):
            self.n = state["n"]

    it = ShardedIterator(Counter, [2, 3], count=4)
    np.testing.assert_array_equal(next(it)["x"].ravel(), [21, 21, 31, 31])
    states = {0: {"n": 5}, 1: {"n": 6}} | it.get_state()
    record = position_record(states, 4)
    assert json.loads(json.dumps(record)) == record  # what the checkpoint's JSON holds
    fresh = ShardedIterator(Counter, [2, 3], count=4)
    fresh.set_state(read_position_record(record, 4))
    np.testing.assert_array_equal(next(fresh)["x"].ravel(), [22, 22, 32, 32])
    # One shard keeps the checkpoint format of before: the bare position.
    assert position_record({0: {"n": 1}}, 1) == {"n": 1}
    assert read_position_record({"n": 1}, 1) == {0: {"n": 1}}
    with pytest.raises(DataError, match=r"for 4 data shard\(s\) but this run reads 2; set data"):
        read_position_record(record, 2)


def test_shard_layout_rejects_a_batch_that_does_not_split(tiny_run_args):
    from llmzoo import sharding

    mesh = sharding.strategy_mesh("dp")
    batch = sharding.batch_sharding(mesh)
    cfg = resolve_train_config(None, [*tiny_run_args, "data.shards=2"])
    assert shard_layout(cfg, batch) == ((0, 8), range(0, 2), 2)
    cfg = resolve_train_config(None, [*tiny_run_args, "data.shards=3"])
    with pytest.raises(ConfigError, match="batch_size=8 is not divisible by data.shards=3"):
        shard_layout(cfg, batch)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "localhost:1234"}, "set but not JAX_NUM_PROCESSES"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            "JAX_NUM_PROCESSES='two' is not an integer >= 1",
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            r"JAX_PROCESS_ID='2' is not an integer in \[0, 2\)",
        ),
    ],
)
def test_bad_launch_variables_are_one_line(monkeypatch, tmp_path, error_line, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["train", f"run_dir={tmp_path / 'run'}"]) == 2
    assert re.search(message, error_line())
    assert not (tmp_path / "run").exists()
