"""Evaluate a run's newest checkpoint on a dataset split, with its objective's own metrics."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax

from llmzoo import run_dir as ckpt
from llmzoo.data.records import is_records, make_record_eval_batches
from llmzoo.errors import DataError
from llmzoo.hf.tokenizer import load_tokenizer
from llmzoo.models import registry
from llmzoo.objectives import registry as objectives
from llmzoo.objectives.registry import build_examples
from llmzoo.train.loop import evaluate
from llmzoo.train.setup import initial_params
from llmzoo.train.step import eval_step


def evaluate_run(run_dir: str, *, split: str | None = None, max_batches: int | None = None) -> dict:
    """Validation loss, perplexity and the objective's metrics of a run.

    The examples are built as in training (masked positions, corrupted spans ...), with the
    corruption drawn from a fixed seed, so repeated evaluations agree.

    Returns:
        ``{'step', 'split', 'objective', 'loss', 'ppl', 'tokens', <metrics>}``: for masked LM
        ``accuracy`` (of the predicted masked tokens), for span corruption and denoising ``loss``
        is per target token; a distilled run (objective ``distill``) is scored as ``causal_lm``:
        ``loss`` is its plain next-token loss, comparable with an undistilled run's.
    """
    cfg, params, step = ckpt.load_params(run_dir)
    tokenizer = load_tokenizer(ckpt.tokenizer_path(run_dir) or cfg.data.tokenizer_path)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise DataError(
            f"the tokenizer of run {run_dir!r} has {tokenizer.vocab_size} tokens but "
            f"model.vocab_size={cfg.model.vocab_size}; the run's tokenizer file is not the one "
            "it was trained with"
        )
    objective, name = objectives.for_config(cfg), cfg.objective.name
    if objective.eval_objective is not None:  # a distilled student: its own next-token loss
        cfg = dataclasses.replace(
            cfg, objective=dataclasses.replace(cfg.objective, name=objective.eval_objective)
        )
        objective = objectives.for_config(cfg)
    split = split or cfg.data.eval_split
    batches = _batches(cfg, tokenizer, split, max_batches or cfg.eval_batches)
    check = getattr(registry.get(cfg.model.kind), "check_batch", None)
    for batch in batches if check is not None else ():
        if "tokens" in batch:  # a batch of pairs has none: the run's tokenizer made its ids
            check(batch, cfg.model)  # ids past a table would be clamped silently on the device
    frozen = None
    if objective.split is not None:  # e.g. DPO's reference: the run's initial params
        _, frozen = objective.split(cfg, initial_params(cfg))
    fn = jax.jit(functools.partial(eval_step, objective=objective.loss, cfg=cfg.model))
    result = evaluate(functools.partial(fn, frozen=frozen), params, batches, put=lambda b: b)
    extra = {k: v for k, v in result.items() if k not in ("loss", "count")}
    return {
        "step": step,
        "split": split,
        "objective": name,
        "loss": result["loss"],
        "ppl": math.exp(min(result["loss"], 50)),
        "tokens": int(result["count"]),
        **extra,
    }


def _batches(cfg, tokenizer, split: str, max_batches: int) -> list:
    """The evaluation batches of ``split``, built as in training."""
    from llmzoo.data import make_eval_batches, source_for

    examples = build_examples(cfg, tokenizer)
    if is_records(examples):
        records = examples.load(cfg.data, split)
        return make_record_eval_batches(
            records, examples, batch_size=cfg.batch_size, max_batches=max_batches
        )
    return make_eval_batches(
        source_for(cfg.data, split),
        tokenizer,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        max_batches=max_batches,
        example=examples,
    )
