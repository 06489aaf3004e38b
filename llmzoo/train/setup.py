"""Setting up a training run: the model config from ``init_from``, the tokenizer, the mesh
layout and the initial (sharded) train state, and the checks that run before any work."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from llmzoo import run_dir as ckpt
from llmzoo import sharding
from llmzoo.config import TrainConfig
from llmzoo.errors import ConfigError
from llmzoo.hf.tokenizer import load_tokenizer
from llmzoo.models import registry
from llmzoo.objectives import registry as objectives
from llmzoo.params import fit_params, fresh_init_key, init_params, is_spec
from llmzoo.train import distributed
from llmzoo.train.optimizer import make_optimizer
from llmzoo.train.step import TrainState


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
    """Loads the configured tokenizer, training it on the dataset first if it is missing.

    With several processes, process 0 prepares the dataset's splits (a TFDS build, for local
    text) and the tokenizer while the others wait, then all load them: ``data.data_dir`` and the
    tokenizer must be on a file system the processes share.
    """
    from llmzoo.data import source_for

    d = cfg.data
    if not distributed.is_primary():
        distributed.barrier("llmzoo_data")
        return load_tokenizer(d.tokenizer_path)
    records = objectives.get(cfg.objective.name).examples is not None  # no text source
    if jax.process_count() > 1 and not records:
        source_for(d, d.train_split), source_for(d, d.eval_split)
    tokenizer = _load_or_train_tokenizer(d, log)
    distributed.barrier("llmzoo_data")
    return tokenizer


def _load_or_train_tokenizer(d, log):
    from llmzoo.data import iter_texts, train_tokenizer

    path = d.tokenizer_path
    if os.path.exists(path) or not d.train_tokenizer:
        return load_tokenizer(path)
    log(f"training a {d.vocab_size}-token {d.tokenizer_type} tokenizer on {d.dataset} ...")
    t0 = time.time()
    prefix = path[: -len(".model")] if path.endswith(".model") else path
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    texts = iter_texts(d, d.train_split)
    train_tokenizer(texts, prefix, vocab_size=d.vocab_size, model_type=d.tokenizer_type)
    log(f"tokenizer written to {prefix}.model in {time.time() - t0:.1f}s")
    return load_tokenizer(prefix + ".model")


def replicate_scalars(tree, mesh):
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, rep), tree
    )


def layout(cfg: TrainConfig):
    """The mesh, the rules and the param shardings of ``cfg``: one-line ConfigErrors for a mesh
    that does not fit the devices, bad rules or a dimension the mesh cannot split, before any
    work."""
    mesh = sharding.strategy_mesh(cfg.strategy, cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    rules = sharding.resolve_rules(cfg.sharding_rules)
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    return mesh, rules, sharding.param_shardings(specs, mesh, rules)


def _init_from(cfg: TrainConfig, specs, p_shard, key, log):
    """The params of ``cfg.init_from`` laid out by ``p_shard``. Params the run lacks (a new task
    head) are freshly initialised, and params it has but ``cfg.model`` does not (the LM head
    under a classifier) are dropped; both are logged."""
    src_cfg = ckpt.read_config(cfg.init_from)
    src_specs = registry.get(src_cfg.model.kind).param_specs(src_cfg.model)
    shape = lambda tree: jax.tree.map(lambda s: (s.shape, s.dtype), tree, is_leaf=is_spec)  # noqa: E731
    if shape(src_specs) == shape(specs):
        _, params, _ = ckpt.load_params(cfg.init_from, shardings=p_shard)
        log(f"initialised params from {cfg.init_from}")
        return params
    _, src, _ = ckpt.load_params(cfg.init_from)
    params, new, dropped = fit_params(specs, src, key, p_shard)
    log(f"initialised params from {cfg.init_from}; new: {', '.join(new) or 'none'}; "
        f"dropped: {', '.join(dropped) or 'none'}")  # fmt: skip
    return params


def initial_params(cfg: TrainConfig, p_shard=None, log=lambda *a, **k: None):
    """The params a run starts from: ``cfg.init_from``'s (fitted to ``cfg.model``) or fresh
    ones from ``cfg.seed``; laid out by ``p_shard`` (default: one device)."""
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    if p_shard is None:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        p_shard = jax.tree.map(lambda _: one, specs, is_leaf=is_spec)
    key = fresh_init_key(cfg.seed)
    if cfg.init_from:
        return _init_from(cfg, specs, p_shard, key, log)
    return init_params(key, specs, p_shard)


def initial_state(cfg: TrainConfig, objective, mesh, p_shard, log):
    """A fresh (or ``init_from``) TrainState laid out by ``p_shard``, its optimizer and loss.

    The objective chooses what is trained and what stays frozen
    (:func:`llmzoo.objectives.registry.training_form`). The optimizer state's moments are
    created by ``zeros_like`` of the trained params, in their shardings; its scalars are
    replicated.
    """
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    params = initial_params(cfg, p_shard, log)
    trainable, frozen, loss = objectives.training_form(cfg, objective, params)
    if trainable is params:
        tx = make_optimizer(cfg.optim, cfg.steps, specs)
    else:
        mask = jax.tree.map(lambda x: x.ndim >= 2, trainable)
        tx = make_optimizer(cfg.optim, cfg.steps, mask=mask)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable), frozen=frozen
    )
    return replicate_scalars(state, mesh), tx, loss


def check_tokenizer_for(cfg: TrainConfig, objective) -> None:
    """A fine-tuning objective reads records, on which no tokenizer is trained."""
    if objective.examples is not None and not os.path.exists(cfg.data.tokenizer_path):
        raise ConfigError(
            f"objective.name={cfg.objective.name!r} fine-tunes a pretrained model with its "
            f"tokenizer, but {cfg.data.tokenizer_path!r} does not exist; set init_from=RUN (a "
            "pretrained run, e.g. of `llmzoo train`) or data.tokenizer=PATH"
        )


def check_fits(cfg: TrainConfig, tokenizer, mesh, rules) -> None:
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}; set model.vocab_size>={tokenizer.vocab_size}"
        )
    n_batch = sharding.batch_shards(mesh, rules)
    if (cfg.batch_size // cfg.grad_accum) % n_batch:
        raise ConfigError(
            f"micro-batch {cfg.batch_size // cfg.grad_accum} (batch_size/grad_accum) is not "
            f"divisible by the {n_batch} data-parallel devices; change batch_size or the mesh"
        )


def write_run_files(run_dir: str, examples) -> None:
    """The files an objective keeps with its run (a label map ...), written atomically."""
    for name, text in getattr(examples, "run_files", dict)().items():
        path = os.path.join(run_dir, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
