"""The training loop: data, sharded state, jitted steps, evaluation, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from llmzoo import run_dir as ckpt
from llmzoo import sharding
from llmzoo.config import TrainConfig
from llmzoo.config_io import to_dict
from llmzoo.data.records import is_records
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.objectives import registry as objectives
from llmzoo.params import flatten
from llmzoo.train import distributed, inputs
from llmzoo.train.divergence import DivergenceGuard
from llmzoo.train.inputs import Input, make_input
from llmzoo.train.metrics import MetricsWriter
from llmzoo.train.optimizer import lr_schedule
from llmzoo.train.setup import (
    check_fits,
    check_tokenizer_for,
    initial_state,
    layout,
    prepare_tokenizer,
    resolve_init_from,
    resolve_teacher,
    write_run_files,
)
from llmzoo.train.step import TrainState, make_steps

# Keys that may change between a run and its resumption; anything else must match.
RESUMABLE_CHANGES = {
    "steps",
    "eval_every",
    "eval_batches",
    "ckpt_every",
    "keep_checkpoints",
    "log_every",
    "sample_prompt",
    "run_dir",
    "sample_tokens",
    # the layout: a checkpoint restores onto any mesh (see _restore)
    "strategy",
    "mesh_data",
    "mesh_fsdp",
    "mesh_tensor",
    "sharding_rules",
}


def check_resume_config(run_dir: str, cfg: TrainConfig) -> None:
    """Raises unless ``run_dir`` is new or holds a run of ``cfg`` (but for the keys in
    :data:`RESUMABLE_CHANGES`); warns when ``steps`` changed."""
    if not os.path.exists(os.path.join(run_dir, "config.yaml")):
        return
    old = flatten(to_dict(ckpt.read_config(run_dir)), ".")
    new = flatten(to_dict(cfg), ".")
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
            raise ConfigError(
                f"run_dir {run_dir!r} holds a run with {key}={old.get(key)!r}, not "
                f"{new.get(key)!r}; use a new run_dir or the run's own config"
            )
    if old.get("steps") != new.get("steps"):
        warnings.warn(
            f"resuming {run_dir!r} with steps={new.get('steps')} (it was {old.get('steps')}): the "
            "learning-rate schedule's cosine decay now ends at the new step count",
            stacklevel=2,
        )


def evaluate(eval_fn, params, batches, put) -> dict:
    """Token-weighted means over ``batches``: ``{'loss', 'count', <objective metrics>}``.

    ``put`` moves a host batch onto the devices.
    """
    sums: dict[str, float] = {}
    for batch in batches:
        out = jax.device_get(eval_fn(params, put(batch)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    count = max(sums.pop("count", 0.0), 1.0)
    result = {k: v / count for k, v in sums.items() if k != "loss_sum"}
    return {"loss": sums.get("loss_sum", 0.0) / count, "count": count, **result}


def _baselines(cfg: TrainConfig, tokenizer, examples, eval_batches) -> dict:
    """What a model that learned nothing about context scores on the validation targets.

    ``unigram_entropy``: the cross-entropy of an add-one smoothed unigram model fitted on the
    targets of the train split's examples (built exactly as in training). For masked LM also
    ``majority_accuracy``: the accuracy of always predicting the most frequent target.
    """
    from llmzoo.data import make_eval_batches, source_for, unigram_entropy

    if is_records(examples):
        return getattr(examples, "baselines", lambda batches: {})(eval_batches)
    d = cfg.data
    src = source_for(d, d.train_split)
    train = make_eval_batches(
        src, tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size, example=examples
    )

    def targets(batches):
        return [np.asarray(b["targets"])[np.asarray(b["loss_mask"]) > 0] for b in batches]

    eval_targets = targets(eval_batches)
    out = {
        "unigram_entropy": unigram_entropy(
            targets(train), cfg.model.vocab_size, eval_token_ids=eval_targets
        )
    }
    if cfg.objective.name == "mlm":
        counts = np.bincount(np.concatenate(eval_targets), minlength=cfg.model.vocab_size)
        out["majority_accuracy"] = float(counts.max() / max(counts.sum(), 1))
    return out


def _sample(cfg: TrainConfig, params, tokenizer) -> str | None:
    """A sampled continuation of ``cfg.sample_prompt`` from a causal LM, else None."""
    from llmzoo.generate import generate_text

    lm = cfg.objective.name in ("causal_lm", "distill")  # a distilled student is a causal LM
    if not lm or not registry.can_generate(cfg.model.kind):
        return None
    params = distributed.host_params(params)  # a collective when params span processes
    if not distributed.is_primary():
        return None
    room = cfg.model.max_seq_len - len(tokenizer.encode(cfg.sample_prompt)) - 1
    return generate_text(
        params,
        tokenizer,
        cfg.sample_prompt,
        cfg=cfg.model,
        max_new_tokens=max(1, min(cfg.sample_tokens, room)),
        temperature=0.8,
        top_k=40,
        seed=cfg.seed,
    )


def _restore(mngr, state: TrainState, inp: Input, log, run_dir) -> tuple[TrainState, int]:
    """The state (and data position) of the newest readable checkpoint, if there is one."""
    abstract = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )
    found = ckpt.restore_latest(mngr, abstract(state.params), abstract(state.opt_state))
    if found is None:
        return state, 0
    start, params, opt_state, meta = found
    step = jax.device_put(jnp.int32(start), state.step.sharding)
    if "data" in meta:
        inp.restore(meta["data"])
    log(f"resumed from step {start} in {run_dir}")
    return TrainState(step=step, params=params, opt_state=opt_state, frozen=state.frozen), start


def _log_record(m: dict, done: int, lr: float, tokens_per_s: float) -> dict:
    rec = {"step": done, "loss": float(m["loss"]), "ppl": math.exp(min(float(m["loss"]), 50))}
    per_step_only = ("loss", "tokens", "grad_norm", "finite", "skipped")
    rec |= {k: float(v) for k, v in m.items() if k not in per_step_only}
    return rec | {"lr": lr, "grad_norm": float(m["grad_norm"]), "tokens_per_s": tokens_per_s}


def _eval_record(result: dict, done: int) -> dict:
    rec = {"step": done, "val_loss": result["loss"], "val_ppl": math.exp(min(result["loss"], 50))}
    return rec | {f"val_{k}": v for k, v in result.items() if k not in ("loss", "count")}


def train(
    cfg: TrainConfig,
    *,
    stop_at: int | None = None,
    progress: bool = True,
    log=print,
    extras: bool = True,
):
    """Trains (or resumes) the run in ``cfg.run_dir``: any model kind, any objective.

    Args:
        cfg: the resolved training config.
        stop_at: exit after this step (saving a checkpoint) as if interrupted; resume later.
        progress: show a progress bar.
        log: where status lines go.
        extras: once training is complete, also compute the baselines and a sample.

    Returns:
        A summary dict: run_dir, step, val_loss and the objective's validation metrics
        (``val_accuracy`` ...), and once training is complete the baselines
        (``unigram_entropy``, for MLM ``majority_accuracy``) and, for a causal LM, a sample.

    With several processes (:mod:`llmzoo.train.distributed`), every process calls this; only
    process 0 logs and writes the run directory's files besides the checkpoints, which all
    save together.
    """
    primary = distributed.is_primary()
    log = log if primary else lambda *a, **k: None
    cfg = objectives.fit_task(resolve_teacher(resolve_init_from(cfg)))
    objective = objectives.for_config(cfg)
    check_resume_config(cfg.run_dir, cfg)
    mesh, rules, p_shard = layout(cfg)  # before any work
    # a rank-1 spec: it shards the leading dimension of every rank (labels [B], tokens [B, T])
    batch_shard = sharding.batch_sharding(mesh, ndim=1, rules=rules)
    inputs.shard_layout(cfg, batch_shard)  # also before any work
    check_tokenizer_for(cfg, objective)
    tokenizer = prepare_tokenizer(cfg, log)
    check_fits(cfg, tokenizer, mesh, rules)
    examples = objectives.build_examples(cfg, tokenizer)

    state, tx, loss = initial_state(cfg, objective, mesh, p_shard, log)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    train_fn, eval_fn = make_steps(
        loss, cfg.model, tx, cfg.grad_accum, state_shardings, batch_shard
    )
    inp = make_input(cfg, tokenizer, examples, batch_shard)
    with ckpt.training_checkpoints(cfg.run_dir, max_to_keep=cfg.keep_checkpoints) as mngr:
        state, start = _restore(mngr, state, inp, log, cfg.run_dir)
        # Only now, with the checkpoint (if any) read, is the run directory written to.
        if primary:
            ckpt.write_config(cfg.run_dir, cfg)
            ckpt.copy_tokenizer(tokenizer.path, cfg.run_dir)
            write_run_files(cfg.run_dir, examples)
        writer = MetricsWriter(cfg.run_dir, resume_step=start, active=primary)
        run = _Run(cfg, train_fn, eval_fn, inp, mngr, writer, log)
        last = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        try:
            with sharding.use_mesh(mesh, rules):
                state, result = _loop(run, state, (start, last), progress and primary)
                step = max(start, last)
                if step >= cfg.steps and result is None:
                    result = run.evaluate(state)
        finally:
            writer.close()
    summary = {"run_dir": cfg.run_dir, "step": step, "val_loss": None}
    if result is not None:
        summary |= _eval_record(result, step)
    if step >= cfg.steps and extras:
        summary |= _baselines(cfg, tokenizer, examples, inp.eval_batches)
        params = objectives.model_params(cfg, state.params, state.frozen)
        summary["sample"] = _sample(cfg, params, tokenizer)
    return summary


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the loop works with besides the state: compiled steps, data and outputs."""

    cfg: TrainConfig
    train_fn: Callable
    eval_fn: Callable
    inp: Input  # the training iterator and validation batches
    mngr: Any  # the Orbax checkpoint manager
    writer: MetricsWriter
    log: Callable  # prints on process 0 only

    def evaluate(self, state: TrainState) -> dict:
        """Validation metrics of ``state``'s params (and frozen params: the state is donated
        to each step, so they are read from the current state)."""
        eval_fn = self.eval_fn
        if state.frozen is not None:
            eval_fn = functools.partial(eval_fn, frozen=state.frozen)
        return evaluate(eval_fn, state.params, self.inp.eval_batches, self.inp.put_global)


class _Meter:
    """Turns a logged step's metrics into a record: tokens/s since the last one, and the lr."""

    def __init__(self, cfg: TrainConfig, guard: DivergenceGuard):
        self.cfg, self.guard = cfg, guard
        self.schedule = lr_schedule(cfg.optim, cfg.steps)
        self.t_last = time.time()

    def record(self, metrics, done: int) -> dict:
        m = jax.device_get(metrics)
        now = time.time()
        tokens_per_s = float(m["tokens"]) * self.cfg.log_every / max(now - self.t_last, 1e-9)
        self.t_last = now
        # A skipped step leaves the optimizer's count, and so the schedule, where it was.
        count = max(done - 1 - self.guard.skipped, 0)
        rec = _log_record(m, done, float(self.schedule(count)), tokens_per_s)
        if self.cfg.on_nan == "skip_step":
            rec["skipped_steps"] = self.guard.skipped
        return rec


def _loop(run: _Run, state: TrainState, span: tuple[int, int], progress: bool):
    """Runs steps ``span = (start, last)``: logging, periodic evaluation and checkpoints.

    Returns:
        ``(state, the last evaluation result or None)``.

    Raises:
        LlmzooError: with ``on_nan=stop``, after a step whose loss or gradient norm is not
            finite (see :class:`DivergenceGuard`); nothing is saved after that step.
    """
    (start, last), cfg = span, run.cfg
    guard = DivergenceGuard(cfg, run.mngr, start)
    meter, key, result = _Meter(cfg, guard), jax.random.key(cfg.seed), None
    bar = tqdm(range(start, last), initial=start, total=cfg.steps, disable=not progress,
               desc="train", dynamic_ncols=True)  # fmt: skip
    with bar:
        for step in bar:
            state, metrics = run.train_fn(state, run.inp.put(next(run.inp.it)), key)
            done = step + 1
            guard.push(done, metrics["finite"])
            log_now = done % cfg.log_every == 0 or done == last
            eval_now = done % cfg.eval_every == 0 or done == cfg.steps
            save_now = done % cfg.ckpt_every == 0 or done == last
            if log_now or eval_now or save_now:
                guard.check()
            if log_now:
                rec = meter.record(metrics, done)
                run.writer.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}",
                                tok_s=f"{rec['tokens_per_s']:.0f}")  # fmt: skip
            if eval_now:
                result = run.evaluate(state)
                run.writer.write(_eval_record(result, done))
                (bar.write if progress else run.log)(f"step {done}: val_loss {result['loss']:.4f}")
            if save_now:
                guard.check_state(state, done)
                meta = {"step": done, "data": run.inp.position(), "config": to_dict(cfg)}
                ckpt.save(run.mngr, done, state.params, state.opt_state, meta)
    return state, result
