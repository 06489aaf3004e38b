"""Pretrained tiny runs that the fine-tuning tests start from (trained once per test worker)."""

import os

import filelock
import pytest

from llmzoo.presets import resolve_train_config
from llmzoo.train.loop import train

COMMON = [
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
    args = [
        f"data.data_dir={data_dir}",
        f"data.tokenizer={data_dir}/sp512.model",
        f"run_dir={run_dir}",
        f"steps={steps}",
        *COMMON,
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
