"""Evaluate a run's newest checkpoint on a dataset split."""

from __future__ import annotations

import jax

from llmzoo.train import checkpoint as ckpt
from llmzoo.train.step import eval_step


def evaluate_run(run_dir: str, *, split: str | None = None, max_batches: int | None = None) -> dict:
    """Validation loss and perplexity of a run.

    Returns:
        ``{'step', 'split', 'loss', 'ppl', 'tokens'}``.
    """
    import functools
    import math

    from llmzoo.data import build_source, make_eval_batches
    from llmzoo.train.loop import load_any_tokenizer

    cfg, params, step = ckpt.load_params(run_dir)
    tok_path = ckpt.tokenizer_path(run_dir) or cfg.data.tokenizer
    tokenizer = load_any_tokenizer(tok_path)
    d = cfg.data
    split = split or d.eval_split
    src = build_source(d.dataset, split, data_dir=d.data_dir, text_key=d.text_key)
    fn = jax.jit(functools.partial(eval_step, cfg=cfg.model))
    total = count = 0.0
    for batch in make_eval_batches(
        src,
        tokenizer,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        max_batches=max_batches or cfg.eval_batches,
    ):
        out = jax.device_get(fn(params, batch))
        total += float(out["loss_sum"])
        count += float(out["count"])
    loss = total / max(count, 1.0)
    return {
        "step": step,
        "split": split,
        "loss": loss,
        "ppl": math.exp(min(loss, 50)),
        "tokens": int(count),
    }
