"""The training loop: data, sharded state, jitted steps, evaluation, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from llmzoo import sharding
from llmzoo.config import TrainConfig, to_dict
from llmzoo.errors import ConfigError
from llmzoo.models import decoder
from llmzoo.params import flatten, init_params
from llmzoo.train import checkpoint as ckpt
from llmzoo.train.metrics import MetricsWriter
from llmzoo.train.optimizer import lr_schedule, make_optimizer
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
}


def _check_resume_config(run_dir: str, cfg: TrainConfig) -> None:
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


def resolve_init_from(cfg: TrainConfig) -> TrainConfig:
    """With ``init_from``, take the model config (and tokenizer) of that run."""
    if not cfg.init_from:
        return cfg
    src = ckpt.read_config(cfg.init_from)
    tok = ckpt.tokenizer_path(cfg.init_from)
    data = (
        cfg.data
        if tok is None
        else dataclasses.replace(cfg.data, tokenizer=tok, train_tokenizer=False)
    )
    return dataclasses.replace(cfg, model=src.model, data=data)


def prepare_tokenizer(cfg: TrainConfig, log=print):
    """Loads the configured tokenizer, training it on the dataset first if it is missing."""
    from llmzoo.data import Tokenizer, iter_texts, train_tokenizer

    d = cfg.data
    if os.path.exists(d.tokenizer) or not d.train_tokenizer:
        return load_any_tokenizer(d.tokenizer)
    log(f"training a {d.vocab_size}-token {d.tokenizer_type} tokenizer on {d.dataset} ...")
    t0 = time.time()
    prefix = d.tokenizer[: -len(".model")] if d.tokenizer.endswith(".model") else d.tokenizer
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    texts = iter_texts(d.dataset, d.train_split, data_dir=d.data_dir, text_key=d.text_key)
    train_tokenizer(texts, prefix, vocab_size=d.vocab_size, model_type=d.tokenizer_type)
    log(f"tokenizer written to {prefix}.model in {time.time() - t0:.1f}s")
    return Tokenizer.load(prefix + ".model")


def load_any_tokenizer(path: str):
    """Loads a SentencePiece ``.model`` or a Hugging Face ``tokenizer.json``."""
    if path.endswith(".json"):
        from llmzoo.hf.tokenizer import load_hf_tokenizer

        return load_hf_tokenizer(path)  # the file itself, not whatever its folder holds
    from llmzoo.data import Tokenizer

    return Tokenizer.load(path)


def evaluate(eval_fn, params, batches, put) -> float:
    """Token-weighted mean loss over ``batches``."""
    total, count = 0.0, 0.0
    for batch in batches:
        out = jax.device_get(eval_fn(params, put(batch)))
        total += float(out["loss_sum"])
        count += float(out["count"])
    return total / max(count, 1.0)


def _replicate_scalars(tree, mesh):
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, rep), tree
    )


def _initial_state(cfg: TrainConfig, mesh, log) -> tuple[TrainState, object]:
    """A fresh (or ``init_from``) TrainState laid out on ``mesh``, and its optimizer."""
    specs = decoder.param_specs(cfg.model)
    tx = make_optimizer(cfg.optim, cfg.steps, specs)
    p_shard = sharding.param_shardings(specs, mesh)
    if cfg.init_from:
        _, params, _ = ckpt.load_params(cfg.init_from, shardings=p_shard)
        log(f"initialised params from {cfg.init_from}")
    else:
        key = jax.random.fold_in(jax.random.key(cfg.seed), 0x7FFFFFFF)
        params = init_params(key, specs, p_shard)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    return _replicate_scalars(state, mesh), tx


def _final_summary(cfg, state, tokenizer, eval_batches, val_loss) -> dict:
    """Validation loss next to the unigram baseline, and a sample, at the end of training."""
    from llmzoo.data import build_source, unigram_entropy
    from llmzoo.generate import generate_text

    d = cfg.data
    train_src = build_source(d.dataset, d.train_split, data_dir=d.data_dir, text_key=d.text_key)
    train_tokens = (tokenizer.encode(train_src[i]) for i in range(len(train_src)))
    eval_tokens = [np.asarray(b["targets"])[np.asarray(b["loss_mask"]) > 0] for b in eval_batches]
    room = cfg.model.max_seq_len - len(tokenizer.encode(cfg.sample_prompt)) - 1
    sample = generate_text(
        jax.device_get(state.params),
        tokenizer,
        cfg.sample_prompt,
        cfg=cfg.model,
        max_new_tokens=max(1, min(cfg.sample_tokens, room)),
        temperature=0.8,
        top_k=40,
        seed=cfg.seed,
    )
    return {
        "val_loss": val_loss,
        "unigram_entropy": unigram_entropy(
            train_tokens, tokenizer.vocab_size, eval_token_ids=eval_tokens
        ),
        "sample": sample,
    }


def train(cfg: TrainConfig, *, stop_at: int | None = None, progress: bool = True, log=print):
    """Trains (or resumes) the run in ``cfg.run_dir``.

    Args:
        cfg: the resolved training config.
        stop_at: exit after this step (saving a checkpoint) as if interrupted; resume later.
        progress: show a progress bar.
        log: where status lines go.

    Returns:
        A summary dict: step, val_loss, unigram_entropy, sample, run_dir.
    """
    from llmzoo.data import build_source, make_eval_batches, make_lm_pipeline

    cfg = resolve_init_from(cfg)
    run_dir = cfg.run_dir
    _check_resume_config(run_dir, cfg)
    tokenizer = prepare_tokenizer(cfg, log)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}; set model.vocab_size>={tokenizer.vocab_size}"
        )
    mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    if (cfg.batch_size // cfg.grad_accum) % n_batch:
        raise ConfigError(
            f"micro-batch {cfg.batch_size // cfg.grad_accum} (batch_size/grad_accum) is not "
            f"divisible by the {n_batch} data-parallel devices; change batch_size or the mesh"
        )

    state, tx = _initial_state(cfg, mesh, log)
    schedule = lr_schedule(cfg.optim, cfg.steps)
    key = jax.random.key(cfg.seed)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_shard = sharding.batch_sharding(mesh)
    train_fn, eval_fn = make_steps(cfg.model, tx, cfg.grad_accum, state_shardings, batch_shard)

    def put(batch):
        return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, batch_shard)

    d = cfg.data
    train_src = build_source(d.dataset, d.train_split, data_dir=d.data_dir, text_key=d.text_key)
    eval_src = build_source(d.dataset, d.eval_split, data_dir=d.data_dir, text_key=d.text_key)
    it = make_lm_pipeline(
        train_src, tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
    )
    eval_batches = list(
        make_eval_batches(
            eval_src,
            tokenizer,
            seq_len=cfg.seq_len,
            batch_size=cfg.batch_size,
            max_batches=cfg.eval_batches,
        )
    )

    mngr = ckpt.checkpoint_manager(run_dir, max_to_keep=cfg.keep_checkpoints)
    abstract = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )
    found = ckpt.restore_latest(mngr, abstract(state.params), abstract(state.opt_state))
    start = 0
    if found is not None:
        start, params, opt_state, meta = found
        state = TrainState(
            step=jax.device_put(jnp.int32(start), state_shardings.step),
            params=params,
            opt_state=opt_state,
        )
        if "data" in meta:
            it.set_state(meta["data"])
        log(f"resumed from step {start} in {run_dir}")
    # Only now, with the checkpoint (if any) read, is the run directory written to.
    ckpt.write_config(run_dir, cfg)
    ckpt.copy_tokenizer(tokenizer.path, run_dir)
    writer = MetricsWriter(run_dir, resume_step=start)
    last = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps

    def save(step):
        ckpt.save(
            mngr,
            step,
            state.params,
            state.opt_state,
            {"step": step, "data": it.get_state(), "config": to_dict(cfg)},
        )

    val_loss = None
    bar = tqdm(
        range(start, last),
        initial=start,
        total=cfg.steps,
        disable=not progress,
        desc="train",
        dynamic_ncols=True,
    )
    t_last, tok_since = time.time(), 0.0
    with jax.set_mesh(mesh):
        for step in bar:
            state, metrics = train_fn(state, put(next(it)), key)
            done = step + 1
            if done % cfg.log_every == 0 or done == last:
                m = jax.device_get(metrics)
                tok_since += float(m["tokens"]) * cfg.log_every
                now = time.time()
                rec = {
                    "step": done,
                    "loss": float(m["loss"]),
                    "ppl": math.exp(min(m["loss"], 50)),
                    "lr": float(schedule(done - 1)),
                    "grad_norm": float(m["grad_norm"]),
                    "tokens_per_s": tok_since / max(now - t_last, 1e-9),
                }
                t_last, tok_since = now, 0.0
                writer.write(rec)
                bar.set_postfix(
                    loss=f"{rec['loss']:.3f}",
                    lr=f"{rec['lr']:.2e}",
                    tok_s=f"{rec['tokens_per_s']:.0f}",
                )
            if done % cfg.eval_every == 0 or done == cfg.steps:
                val_loss = evaluate(eval_fn, state.params, eval_batches, put)
                writer.write(
                    {"step": done, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
                )
                bar.write(f"step {done}: val_loss {val_loss:.4f}")
            if done % cfg.ckpt_every == 0 or done == last:
                save(done)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    step = max(start, last)
    summary = {"run_dir": run_dir, "step": step, "val_loss": val_loss}
    if step >= cfg.steps:
        if val_loss is None:
            with jax.set_mesh(mesh):
                val_loss = evaluate(eval_fn, state.params, eval_batches, put)
        summary.update(_final_summary(cfg, state, tokenizer, eval_batches, val_loss))
    return summary
