"""Fault injection: a disk that fills during a checkpoint save, and SIGKILL at random moments
(some in the middle of a save), through the CLI. Every resumed run matches an uninterrupted one
exactly, step for step; a failed save is reported in one line."""

import asyncio
import gc
import json
import logging
import os
import random
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from llmzoo.errors import CheckpointError
from llmzoo.orbax_quiet import quiet_failed_saves
from llmzoo.run_dir import load_params, wait_until_saved
from llmzoo.train.metrics import MetricsWriter, read_metrics

STEPS = 32
TMP = ".orbax-checkpoint-tmp"  # Orbax writes <step><TMP>/ and renames it to <step>/ when complete


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """The environment of the training processes: one persistent JAX compilation cache, so
    that after the first run a process starts in seconds rather than compiling again."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return os.environ | {
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONUNBUFFERED": "1",  # a killed process's output is not lost in a buffer
    }


def train_cmd(tiny_run_args, run_dir, *args):
    overrides = [*tiny_run_args, f"run_dir={run_dir}", f"steps={STEPS}", f"eval_every={STEPS}"]
    return [sys.executable, "-m", "llmzoo", "train", "--no-progress", *overrides, *args]


def run(cmd, env, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kw)


def loss_records(run_dir):
    """``[(step, loss)]`` in file order: a step logged twice would show up twice."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(ln) for ln in f]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


@pytest.fixture(scope="module")
def straight_losses(tmp_path_factory, tiny_run_args, cache_env):
    """The per-step losses of an uninterrupted run (it also fills the compilation cache)."""
    run_dir = tmp_path_factory.mktemp("faults") / "straight"
    proc = run(train_cmd(tiny_run_args, run_dir, f"ckpt_every={STEPS}"), cache_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = loss_records(run_dir)
    assert [s for s, _ in recs] == list(range(1, STEPS + 1))
    return recs


class FailedSaveManager:
    """Stands in for an Orbax CheckpointManager whose background save of step 6 failed."""

    directory = "/runs/r/checkpoints"

    def __init__(self):
        self.steps = [4, 6]  # Orbax lists a step as soon as its save starts

    def latest_step(self):
        return max(self.steps)

    error = (  # as TensorStore words it
        'OUT_OF_RANGE: Error writing "embed.table/0.0" in OCDBT database at local file '
        '"/runs/r/checkpoints/6.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/": Failed to '
        "write 58900 bytes to file 13: No space left on device [os_error_code='28']"
    )

    def wait_until_finished(self):
        raise ValueError(self.error)

    def reload(self):
        self.steps = [4]


def test_failed_save_names_the_reason_the_path_and_the_step_to_resume_from():
    with pytest.raises(CheckpointError) as e:
        wait_until_saved(FailedSaveManager())
    assert str(e.value) == (
        "could not write the checkpoint at step 6 to '/runs/r/checkpoints/6': No space left on "
        "device; free disk space and rerun the same command to resume from step 4"
    )


def _lose_future_with_error(message):
    """Garbage-collects a future whose exception was never retrieved, as Orbax leaves the
    TensorStore writes it abandons when a save fails: asyncio logs it as an error."""
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(ValueError(message))
    del future
    gc.collect()
    loop.close()


def test_abandoned_writes_of_a_failed_save_log_nothing_but_other_errors_still_log(caplog):
    quiet_failed_saves()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _lose_future_with_error(FailedSaveManager.error)
        assert caplog.records == []
        _lose_future_with_error("some other failure")
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        "Future exception was never retrieved"
    ]
    assert "some other failure" in caplog.records[0].getMessage()


def test_metrics_line_cut_short_is_dropped_on_resume(tmp_path):
    """A kill or a full disk can cut the last line of metrics.jsonl short."""
    recs = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in recs) + '{"step": 4, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(str(tmp_path)) == recs
    writer = MetricsWriter(str(tmp_path), resume_step=2)
    writer.write({"step": 3, "loss": 0.25})
    writer.close()
    assert read_metrics(str(tmp_path)) == [*recs[:2], {"step": 3, "loss": 0.25}]
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def with_file_size_limit(cmd, limit):
    """``cmd`` run with every file it writes capped at ``limit`` bytes; a write past the cap
    fails with EFBIG (SIGXFSZ is ignored) as on a full disk. The limit is set in a Python that
    then execs ``cmd``: no fork of this (multithreaded) process runs Python code."""
    setup = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", setup, *cmd]


@pytest.mark.slow
def test_disk_full_during_save_is_one_line_and_the_run_resumes_exactly(
    straight_losses, tiny_run_args, cache_env, tmp_path
):
    """A save that hits a file-size limit ends the run with one ``error:`` line (exit 2), keeps
    the previous checkpoint intact, and a rerun resumes from it as if nothing had happened.

    RLIMIT_FSIZE caps every file the process writes. Every checkpoint holds the same arrays, so
    the first one is written without the limit; the limit then sits between the largest other
    file the run writes (tokenizer, config, metrics) and the checkpoint's largest data file (the
    embedding table alone is 64 KiB), so the next save fails part-way through its writes.
    """
    t0 = time.time()
    run_dir = tmp_path / "full"
    ckpt_dir = run_dir / "checkpoints"
    cmd = train_cmd(tiny_run_args, run_dir, "ckpt_every=2")
    first = run([*cmd, "--stop-at", "2"], cache_env)
    assert first.returncode == 0, first.stderr[-3000:]
    _, params_before, step = load_params(str(run_dir))
    assert step == 2

    limit = 32 * 1024
    sizes = {
        os.path.relpath(os.path.join(root, name), run_dir): os.path.getsize(
            os.path.join(root, name)
        )
        for root, _, names in os.walk(run_dir)
        for name in names
    }
    others = {p: n for p, n in sizes.items() if not p.startswith("checkpoints")}
    assert max(others.values()) + 300 * STEPS < limit, others  # room for metrics.jsonl
    assert max(sizes.values()) > limit, sizes  # so the next checkpoint cannot be written
    # The cache read-only: the compiled programs load from it, and nothing new is written.
    env = cache_env | {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}
    full = run(with_file_size_limit(cmd, limit), env)

    expected = (
        f"error: could not write the checkpoint at step 4 to '{ckpt_dir / '4'}': File too large; "
        "raise the file-size limit (ulimit -f) and rerun the same command to resume from step 2"
    )
    assert full.stderr.splitlines() == [expected], full.stderr[-3000:]
    assert full.returncode == 2
    assert "resumed from step 2" in full.stdout
    # the save was cut short inside Orbax's temporary directory, never renamed to a checkpoint
    assert sorted(os.listdir(ckpt_dir)) == ["2", f"4{TMP}"]
    _, params_after, step = load_params(str(run_dir))
    assert step == 2
    assert jax.tree.structure(params_after) == jax.tree.structure(params_before)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params_before, params_after)))

    resumed = run(cmd, cache_env)  # the disk has room again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2" in resumed.stdout
    kept = {str(STEPS - 4), str(STEPS - 2), str(STEPS)}
    assert set(os.listdir(ckpt_dir)) == kept  # the half-written one is gone
    recs = loss_records(run_dir)
    assert recs == straight_losses, f"{recs} != {straight_losses}"
    print(f"\ndisk full: stderr {expected!r}; {len(recs)} steps compared; {time.time() - t0:.0f}s")


def _listdir(ckpt_dir):
    try:
        return os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []


def _kill_when(proc, ckpt_dir, mode, rng):
    """Waits for the moment ``mode`` picks, then SIGKILLs ``proc``.

    ``startup``: a random time into start-up (imports, compilation, restore). ``mid-save``: as
    soon as the save of the n-th step after the newest checkpoint (n random, 1-3) has begun.
    ``random``: a random time after this process began its first save (steps, saves, deletion
    of old checkpoints, the final evaluation).

    Returns:
        ``(killed, mid_save)``: False if the process exited first; whether a save it had begun
        was cut short (its temporary directory is left behind).
    """
    names = _listdir(ckpt_dir)
    resume = max((int(n) for n in names if n.isdigit()), default=0)
    stale = {n for n in names if TMP in n}  # left by the previous kill, deleted before a save
    started = set()  # the temporary directories of the saves this process began
    nth, delay = rng.randint(1, 3), rng.uniform(0.0, 0.8)
    deadline = time.time() + rng.uniform(0.5, 5.0) if mode == "startup" else None
    while proc.poll() is None:
        tmp = {n for n in _listdir(ckpt_dir) if TMP in n}
        stale &= tmp
        started |= tmp - stale
        if mode == "mid-save" and any(int(n.split(".")[0]) >= resume + nth for n in started):
            break
        if mode == "random" and started and deadline is None:
            deadline = time.time() + delay
        if deadline is not None and time.time() >= deadline:
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        return False, False
    proc.kill()
    proc.wait()
    return True, bool({n for n in _listdir(ckpt_dir) if TMP in n} - stale)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(
    straight_losses, tiny_run_args, cache_env, tmp_path
):
    """A run with a checkpoint every step is SIGKILLed at seeded random moments, several in the
    middle of a save, and rerun with the same command each time until it finishes; its per-step
    losses then equal those of an uninterrupted run, and no checkpoint was ever unreadable."""
    t0 = time.time()
    rng = random.Random(1234)
    run_dir = tmp_path / "killed"
    ckpt_dir = run_dir / "checkpoints"
    cmd = train_cmd(tiny_run_args, run_dir, "ckpt_every=1")
    modes = ["mid-save", "mid-save", "random", "random", "startup", "mid-save", "random"]
    rng.shuffle(modes)
    lives = []  # (mode, resumed from, killed, killed mid-save)
    for life, mode in enumerate([*modes, "finish"]):
        log_path = tmp_path / f"life{life}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cache_env)
            killed, mid_save = (
                _kill_when(proc, ckpt_dir, mode, rng) if mode != "finish" else (False, False)
            )
            proc.wait(timeout=600)
        text = log_path.read_text()
        found = re.search(r"resumed from step (\d+)", text)
        lives.append((mode, int(found.group(1)) if found else 0, killed, mid_save))
        if not killed:
            assert proc.returncode == 0, f"life {life} ({mode}) failed:\n{text[-3000:]}"
            break

    kills = sum(k for _, _, k, _ in lives)
    mid_saves = sum(m for _, _, _, m in lives)
    recs = loss_records(run_dir)
    figures = (
        f"{kills} kills, {mid_saves} during a save, {len(recs)} steps compared, "
        f"{time.time() - t0:.0f}s; lives (mode, resumed from, killed, mid-save): {lives}"
    )
    print("\nkill -9: " + figures)
    assert lives[-1][2] is False and f"(step {STEPS})" in text, figures
    assert lives[-1][1] > 0, figures  # the last run resumed: the comparison is not trivial
    assert kills >= 5 and mid_saves >= 2, figures
    assert recs == straight_losses, f"{figures}\n{recs} != {straight_losses}"
    assert not [n for n in _listdir(ckpt_dir) if TMP in n], figures
    assert not (run_dir / "corrupt_checkpoints").exists(), figures  # every commit was atomic
