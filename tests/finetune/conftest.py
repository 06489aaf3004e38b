"""Pretrained tiny runs that the fine-tuning tests start from (trained once per test worker)."""

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
def finetune_data_dir(tmp_path_factory):
    """Where the embedded corpus and its 512-token tokenizer are built (once a worker)."""
    return tmp_path_factory.mktemp("finetune_data")


@pytest.fixture(scope="session")
def pretrained_decoder(tmp_path_factory, finetune_data_dir):
    """A tiny Llama-style decoder trained 150 steps of causal LM on pydoc_topics."""
    model = ["model.preset=llama-tiny", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
             "model.n_kv_heads=2", "model.d_ff=128", "model.max_seq_len=128"]  # fmt: skip
    run = tmp_path_factory.mktemp("pretrained_decoder")
    return pretrain(run, finetune_data_dir, model, steps=150)


@pytest.fixture(scope="session")
def pretrained_encoder(tmp_path_factory, finetune_data_dir):
    """A tiny BERT trained 150 steps of masked LM on pydoc_topics."""
    model = ["objective.name=mlm", "model.preset=bert-tiny", "model.vocab_size=513",
             "model.d_model=64", "model.d_ff=128", "model.max_seq_len=128"]  # fmt: skip
    run = tmp_path_factory.mktemp("pretrained_encoder")
    return pretrain(run, finetune_data_dir, model, steps=150)
