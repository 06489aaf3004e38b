"""Setting up a training run: the model config from ``init_from``, the tokenizer, the mesh
layout and the initial (sharded) train state, and the checks that run before any work."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from llmzoo import compress, sharding
from llmzoo import run_dir as ckpt
from llmzoo.compress import prune
from llmzoo.config import TrainConfig
from llmzoo.errors import ConfigError
from llmzoo.hf.tokenizer import load_tokenizer
from llmzoo.models import registry
from llmzoo.objectives import registry as objectives
from llmzoo.objectives.distill import check_teacher
from llmzoo.params import fit_params, fresh_init_key, init_params, is_spec
from llmzoo.train import distributed
from llmzoo.train.optimizer import init_state, keep_zeros, make_optimizer
from llmzoo.train.step import TrainState


def resolve_init_from(cfg: TrainConfig) -> TrainConfig:
    """With ``init_from``, take the model config (and tokenizer) of that run, and its ``prune``
    unless ``cfg`` sets one (:func:`check_prune` raises where masks cannot be kept)."""
    if not cfg.init_from:
        return check_prune(cfg)
    src = ckpt.read_config(cfg.init_from)
    tok = ckpt.tokenizer_path(cfg.init_from)
    data = (
        cfg.data
        if tok is None
        else dataclasses.replace(cfg.data, tokenizer=tok, train_tokenizer=False)
    )
    # a run trained from a pruned run keeps its zeros (prune.sparsity=0: it trains them too)
    inherit = cfg.prune is None and cfg.lora is None and cfg.objective.name not in UNPRUNABLE
    pcfg = src.prune if inherit else cfg.prune
    return check_prune(dataclasses.replace(cfg, model=src.model, data=data, prune=pcfg))


# Objectives whose training does not go through :func:`initial_state` (no fixed masks).
UNPRUNABLE = ("ppo", "grpo")


def check_prune(cfg: TrainConfig) -> TrainConfig:
    """``cfg``, unless it prunes where fixed masks do not hold: they do in full-parameter
    training by ``llmzoo train``, not for LoRA adapters or PPO/GRPO (a one-line ConfigError)."""
    if cfg.prune is None:
        return cfg
    if cfg.lora is not None or cfg.objective.name in UNPRUNABLE:
        what = "lora" if cfg.lora is not None else f"objective.name={cfg.objective.name!r}"
        raise ConfigError(
            f"prune keeps pruned weights at zero in full-parameter training, not with {what}; "
            "drop prune (or train without it, then run `llmzoo prune`)"
        )
    return cfg


def resolve_teacher(cfg: TrainConfig) -> TrainConfig:
    """With ``teacher`` (objective ``distill``), take that run's tokenizer, once checked: one-line
    ConfigErrors for a distill run without a teacher (or a teacher without distill), a teacher
    directory that does not exist, and a teacher the student cannot learn from."""
    distill = cfg.objective.name == "distill"
    if not cfg.teacher:
        if distill:
            raise ConfigError(
                "objective.name='distill' learns from a teacher run; set teacher=RUN (a trained "
                "causal LM run, e.g. teacher=runs/tiny)"
            )
        return cfg
    if not distill:
        raise ConfigError(
            f"teacher={cfg.teacher!r} is read by objective.name=distill only, not "
            f"{cfg.objective.name!r}; set objective.name=distill or drop teacher"
        )
    if not os.path.isdir(cfg.teacher):
        raise ConfigError(
            f"teacher={cfg.teacher!r} does not exist; point it at a trained run directory "
            "(e.g. runs/tiny)"
        )
    check_teacher(cfg, ckpt.read_config(cfg.teacher).model)
    tok = ckpt.tokenizer_path(cfg.teacher)
    if tok is None:
        return cfg
    own = ckpt.tokenizer_path(cfg.init_from) if cfg.init_from else None
    if own is not None and not filecmp.cmp(own, tok, shallow=False):
        raise ConfigError(
            f"init_from={cfg.init_from!r} and teacher={cfg.teacher!r} have different tokenizers; "
            "distill into a student of the teacher's tokenizer (drop init_from or change it)"
        )
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, tokenizer=tok, train_tokenizer=False)
    )


def load_teacher(cfg: TrainConfig, mesh=None) -> tuple | None:
    """``(model config, params)`` of the run ``cfg.teacher`` (None without one), its params
    laid out over ``mesh`` by the run's sharding rules (default: one device)."""
    if not cfg.teacher:
        return None
    model = ckpt.read_config(cfg.teacher).model
    specs = registry.get(model.kind).param_specs(model)
    rules = sharding.resolve_rules(cfg.sharding_rules)
    shardings = None if mesh is None else sharding.param_shardings(specs, mesh, rules)
    _, params, _ = ckpt.load_params(cfg.teacher, shardings=shardings)
    return model, params


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
        return _dequantized(cfg.init_from, src_cfg, params, p_shard, log)
    _, src, _ = ckpt.load_params(cfg.init_from)
    src = _dequantized(cfg.init_from, src_cfg, src, None, log)
    params, new, dropped = fit_params(specs, src, key, p_shard)
    log(f"initialised params from {cfg.init_from}; new: {', '.join(new) or 'none'}; "
        f"dropped: {', '.join(dropped) or 'none'}")  # fmt: skip
    return params


def _dequantized(run: str, src_cfg: TrainConfig, params, p_shard, log):
    """A quantized ``init_from`` run (``llmzoo quantize``) trains from its dequantized weights
    (``scale * q`` in float, placed by ``p_shard`` if given): the updates are float, so the
    result is a plain run, which ``llmzoo quantize`` can quantize again."""
    if src_cfg.quant is None:
        return params
    log(f"dequantized the {src_cfg.quant.method} weights of {run} to train them in float")
    params = compress.dequantize_params(params)
    return params if p_shard is None else jax.device_put(params, p_shard)


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
    (:func:`llmzoo.objectives.registry.training_form`; a ``teacher`` is loaded here, each time
    a run starts or resumes, and never checkpointed). The optimizer state is created in one
    compiled program (:func:`~llmzoo.train.optimizer.init_state`): its moments in the trained
    params' shardings, its scalars replicated.
    """
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    params = initial_params(cfg, p_shard, log)
    if cfg.prune is not None:
        params = prune.prune_params(params, specs, cfg.prune)  # idempotent on a pruned run
        log(f"pruned ({prune.describe(cfg.prune)}): {prune.sparsity(params, specs, cfg.prune):.2%}"
            " of the target weights are zero and stay zero")  # fmt: skip
    teacher = load_teacher(cfg, mesh)
    if teacher is not None:
        log(f"distilling from the teacher {cfg.teacher}")
    trainable, frozen, loss = objectives.training_form(cfg, objective, params, teacher)
    if trainable is params:
        tx = make_optimizer(cfg.optim, cfg.steps, specs)
    else:
        mask = jax.tree.map(lambda x: x.ndim >= 2, trainable)
        tx = make_optimizer(cfg.optim, cfg.steps, mask=mask)
    if cfg.prune is not None:  # the masks: those of the pruned trainable params
        tx = optax.chain(tx, keep_zeros(lambda p: prune.masks(p, specs, cfg.prune)))
    opt_state = init_state(tx, trainable, mesh)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=trainable, opt_state=opt_state, frozen=frozen
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
