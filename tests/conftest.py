"""Test setup: 8 virtual CPU devices for sharding tests, set before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
