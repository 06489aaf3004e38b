"""Fine-tuning resumes exactly: DPO with LoRA adapters (records data, a frozen base that is also
the reference) stopped part-way and resumed matches the uninterrupted run bit for bit."""

import jax
import numpy as np
import pytest

from llmzoo.presets import resolve_train_config
from llmzoo.run_dir import load_params
from llmzoo.train.loop import train
from llmzoo.train.metrics import read_metrics


def _cfg(pretrained, run_dir):
    args = [
        f"init_from={pretrained}", f"run_dir={run_dir}", "objective.name=dpo",
        "data.dataset=synthetic_preferences:sort", "steps=4", "optim.lr=1e-3",
        "optim.warmup_steps=1", "seq_len=32", "batch_size=8", "eval_batches=1", "eval_every=2",
        "log_every=1", "ckpt_every=2", "lora.rank=2", "lora.dropout=0.1",
    ]  # fmt: skip
    return resolve_train_config(overrides=args)


def _records(run_dir):
    """metrics.jsonl without the timings."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(str(run_dir))]


@pytest.mark.slow
def test_dpo_with_lora_resumes_bit_exactly(pretrained_decoder, tmp_path):
    quiet = lambda *a, **k: None  # noqa: E731
    whole = train(_cfg(pretrained_decoder, tmp_path / "whole"), progress=False, log=quiet)
    cut = _cfg(pretrained_decoder, tmp_path / "cut")
    train(cut, stop_at=2, progress=False, log=quiet)
    resumed = train(cut, progress=False, log=quiet)
    assert _records(tmp_path / "cut") == _records(tmp_path / "whole")
    assert resumed["val_accuracy"] == whole["val_accuracy"]
    (_, a, _), (_, b, _) = load_params(str(tmp_path / "whole")), load_params(str(tmp_path / "cut"))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    _, base, _ = load_params(pretrained_decoder)  # the adapters moved the merged weights
    assert not np.array_equal(a["layers"]["attn"]["wq"], base["layers"]["attn"]["wq"])
