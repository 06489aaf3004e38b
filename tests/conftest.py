"""Test setup: 8 virtual CPU devices for sharding tests, set before JAX is imported."""

import atexit
import os
import shutil
import tempfile

# The CPU backend aborts the process when one of a collective's device threads is 40 s late
# (XLA's default), which a loaded 2-core machine running 8 virtual devices can hit: wait longer.
PATIENT_COLLECTIVES = (
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
    " --xla_cpu_collective_call_terminate_timeout_seconds=900"
)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count=8 {PATIENT_COLLECTIVES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tests check values, not speed, and most of their time is XLA compiling tiny programs. LLVM
# at -O1 and XLA:CPU's loop emitters (instead of its MLIR fusion emitters) compile a tiny train
# step in 1.1 s instead of 2.8 s, and it runs as fast (3.4 against 3.5 ms). At the size of
# benchmarks/train_step.py the loop emitters run a step 10-15% slower: runs keep XLA's defaults.
FAST_COMPILE = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib's XLA knows ``flags`` (it aborts the process on an unknown flag)."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    probe = "import jax; jax.jit(lambda x: x + 1)(1).block_until_ready()"
    return (
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0
    )


# Decided once, in the first process (the test workers and the processes they start inherit it).
if os.environ.get("LLMZOO_TEST_FAST_COMPILE", "1") == "1":
    os.environ["LLMZOO_TEST_FAST_COMPILE"] = "done"
    if _xla_accepts(FAST_COMPILE):
        os.environ["XLA_FLAGS"] += f" {FAST_COMPILE}"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("LLMZOO_TEST_COMPILE_CACHE", "1") == "1":
    # One persistent compilation cache for the session, shared by the test workers and the
    # processes they start (set in the controller before the workers are spawned): many tests
    # compile the same tiny train step, which then loads in milliseconds. A fresh folder per
    # session, so nothing leaks between runs.
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        _cache = tempfile.mkdtemp(prefix="llmzoo-test-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run_args(tmp_path_factory):
    """CLI overrides for a very small training run on pydoc_topics (data built once a session)."""
    data_dir = tmp_path_factory.mktemp("llmzoo_data")
    return [
        f"data.data_dir={data_dir}",
        f"data.tokenizer={data_dir}/sp512.model",
        "data.vocab_size=512",
        "model.vocab_size=512",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.max_seq_len=64",
        "seq_len=32",
        "batch_size=8",
        "eval_batches=2",
        "log_every=1",
        "sample_tokens=8",
        "optim.warmup_steps=2",
    ]


@pytest.fixture
def error_line(capsys):
    """Returns a function that reads stderr so far and returns its one ``error: ...`` line.

    It fails the test unless there is exactly one such line and no traceback.
    """

    def read() -> str:
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, err
        assert "Traceback" not in err
        return lines[0]

    return read


# Pretrained tiny runs that tests start from (fine-tuning, distillation), each trained once per
# test run and shared by the test workers.
PRETRAIN_COMMON = [
    "data.vocab_size=512",
    "model.vocab_size=512",
    "seq_len=32",
    "batch_size=16",
    "eval_batches=2",
    "eval_every=1000",
    "log_every=50",
    "optim.lr=3e-3",
    "optim.warmup_steps=10",
]


def pretrain(run_dir, data_dir, overrides, steps):
    """Trains a tiny run on the embedded corpus and returns its directory."""
    from llmzoo.presets import resolve_train_config
    from llmzoo.train.loop import train

    args = [
        f"data.data_dir={data_dir}",
        f"data.tokenizer={data_dir}/sp512.model",
        f"run_dir={run_dir}",
        f"steps={steps}",
        *PRETRAIN_COMMON,
        *overrides,
    ]
    cfg = resolve_train_config(overrides=args)
    train(cfg, progress=False, log=lambda *a, **k: None, extras=False)
    return str(run_dir)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A folder every test worker of this run sees (pytest-xdist workers share one base)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pretrained(shared_dir, name, overrides):
    """The run ``name`` trained 150 steps, once per test run: the first worker to ask trains it
    while the others wait on the lock (one lock: the runs share their data folder)."""
    import filelock

    run, data = shared_dir / name, shared_dir / "finetune_data"
    with filelock.FileLock(str(shared_dir / "pretrained.lock")):
        if not (run / "done").exists():
            pretrain(run, data, overrides, steps=150)
            (run / "done").write_text("")
    return str(run)


@pytest.fixture(scope="session")
def finetune_data_dir(shared_dir, pretrained_decoder):
    """The embedded corpus and its 512-token tokenizer, as the pretrained runs built them."""
    return shared_dir / "finetune_data"


@pytest.fixture(scope="session")
def pretrained_decoder(shared_dir):
    """A tiny Llama-style decoder trained 150 steps of causal LM on pydoc_topics."""
    model = ["model.preset=llama-tiny", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
             "model.n_kv_heads=2", "model.d_ff=128", "model.max_seq_len=128"]  # fmt: skip
    return pretrained(shared_dir, "pretrained_decoder", model)


@pytest.fixture(scope="session")
def pretrained_encoder(shared_dir):
    """A tiny BERT trained 150 steps of masked LM on pydoc_topics."""
    model = ["objective.name=mlm", "model.preset=bert-tiny", "model.vocab_size=513",
             "model.d_model=64", "model.d_ff=128", "model.max_seq_len=128"]  # fmt: skip
    return pretrained(shared_dir, "pretrained_encoder", model)
