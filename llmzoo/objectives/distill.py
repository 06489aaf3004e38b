"""Knowledge distillation (Hinton et al. 2015): a student learns a frozen teacher's next-token
distributions along with the next tokens themselves.

The objective ``distill`` trains the run's model (the student) on causal LM examples; the
teacher, a trained run (``TrainConfig.teacher``) of any causal LM kind over the same vocabulary,
reads the same batch. Per counted target token, with ``s, t`` the student's and the teacher's
logits and ``h_s, h_t`` their final (normed) hidden states:

    (1 - alpha) CE(s, target) + alpha tau^2 KL(softmax(t / tau) || softmax(s / tau))
        + hidden_weight mean_D (h_s - h_t)^2

``tau`` is ``objective.kd_temperature``, ``alpha`` ``objective.kd_weight``; the ``tau^2`` keeps the
soft term's gradient on the scale of the hard one's as tau grows. The teacher's params live in the
train state's ``frozen`` (a :class:`Teacher`), never in a checkpoint: a resumed run reloads them
from the teacher's run. Validation reports the plain next-token loss as ``nll`` (``val_nll``;
``val_loss`` is the mixed loss above), the number to compare with a student trained without a
teacher (its ``val_loss``); ``llmzoo eval`` scores a distilled run as ``causal_lm``
(:attr:`llmzoo.objectives.registry.Objective.eval_objective`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from llmzoo.config import TrainConfig
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.objectives.losses import token_nll

# The model kinds a student or teacher may be: causal LMs whose apply reads the same batch.
KINDS = ("decoder", "rnn", "mamba", "rwkv")
# The metric sums distill_loss returns (hidden_mse only with a hidden term).
METRICS = ("nll", "kl", "hidden_mse")


@struct.dataclass
class Teacher:
    """What the student's loss reads but does not train (the objective's ``frozen``): the
    teacher's params, and, static (compiled into the step), its model config and the loss
    settings."""

    params: Any
    cfg: Any = struct.field(pytree_node=False)
    temperature: float = struct.field(pytree_node=False, default=2.0)
    kd_weight: float = struct.field(pytree_node=False, default=0.5)
    hidden_weight: float = struct.field(pytree_node=False, default=0.0)


def soft_kl(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """``KL(softmax(teacher / tau) || softmax(student / tau))`` per position, float32.

    Args:
        student, teacher: logits ``[..., V]``.
        temperature: tau > 0.

    Returns:
        ``[...]``.
    """
    logp_s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    logp_t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    return (jnp.exp(logp_t) * (logp_t - logp_s)).sum(-1)


def hidden_mse(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """``mean_D (h_s - h_t)^2`` of final hidden states ``[..., D]`` per position, float32."""
    diff = student.astype(jnp.float32) - teacher.astype(jnp.float32)
    return (diff * diff).mean(-1)


def distill_loss(params, batch: dict, rng, *, cfg, frozen: Teacher):
    """The distillation loss of the student ``params`` (model config ``cfg``) on a causal LM
    batch (``tokens, targets, loss_mask [B, T]``, optional ``positions, segment_ids``).

    One student forward (with dropout ``rng``) and one teacher forward (no dropout, under
    ``stop_gradient``) over ``[B, T]``.

    Returns:
        ``(loss_sum, count, metrics)``: count is the number of counted target tokens; metric
        sums ``nll`` (the hard next-token loss), ``kl`` (the soft KL at temperature tau,
        unscaled) and, with ``hidden_weight > 0``, ``hidden_mse``.
    """
    out = registry.get(cfg.kind).apply(params, batch, cfg=cfg, rng=rng)
    t_out = registry.get(frozen.cfg.kind).apply(frozen.params, batch, cfg=frozen.cfg)
    t_out = jax.lax.stop_gradient(t_out)
    logits, targets = out["logits"], batch["targets"]
    mask = batch["loss_mask"].astype(jnp.float32)
    tau, alpha = frozen.temperature, frozen.kd_weight
    nll = token_nll(logits, targets)
    kl = soft_kl(logits, t_out["logits"], tau)
    per_token = (1.0 - alpha) * nll + alpha * tau**2 * kl
    metrics = {"nll": (nll * mask).sum(), "kl": (kl * mask).sum()}
    if frozen.hidden_weight > 0:
        mse = hidden_mse(out["final_hidden"], t_out["final_hidden"])
        per_token = per_token + frozen.hidden_weight * mse
        metrics["hidden_mse"] = (mse * mask).sum()
    return (per_token * mask).sum(), mask.sum(), metrics


def split_teacher(cfg: TrainConfig, params, teacher: tuple | None = None) -> tuple[Any, Teacher]:
    """The ``distill`` objective's ``(trainable, frozen)``: all the student's params, and a
    :class:`Teacher` of ``teacher = (teacher's model config, its params)``, which the caller
    loads from ``cfg.teacher`` (:func:`llmzoo.train.setup.load_teacher`)."""
    if teacher is None:
        raise ConfigError(
            "objective.name='distill' learns from a teacher run; set teacher=RUN (a trained "
            "causal LM run sharing the student's vocabulary)"
        )
    t_cfg, t_params = teacher
    o = cfg.objective
    return params, Teacher(
        t_params,
        cfg=t_cfg,
        temperature=o.kd_temperature,
        kd_weight=o.kd_weight,
        hidden_weight=o.hidden_weight,
    )


def check_teacher(cfg: TrainConfig, teacher) -> None:
    """One-line ConfigErrors, before any work, for a teacher (model config ``teacher`` of run
    ``cfg.teacher``) the student ``cfg.model`` cannot learn from: not a causal LM, another
    vocabulary, positions too few for ``seq_len``, or hidden-state matching that cannot apply;
    and for a LoRA student (distillation trains all its params)."""
    where, student = f"teacher {cfg.teacher!r}", cfg.model
    if cfg.lora is not None:
        raise ConfigError("objective.name='distill' trains all the student's params; drop lora")
    if teacher.kind not in KINDS or getattr(teacher, "head", "lm") != "lm":
        raise ConfigError(
            f"{where} is a model.kind={teacher.kind!r} run with model.head="
            f"{getattr(teacher, 'head', 'lm')!r}; distill from a causal LM run ({', '.join(KINDS)})"
        )
    if teacher.vocab_size != student.vocab_size:
        raise ConfigError(
            f"{where} has model.vocab_size={teacher.vocab_size} but the student has "
            f"model.vocab_size={student.vocab_size}; set model.vocab_size={teacher.vocab_size} "
            "(the student reads the teacher's tokenizer)"
        )
    limit = getattr(teacher, "position_limit", None)
    if limit is not None and cfg.seq_len > limit:
        raise ConfigError(
            f"{where} has {limit} learned positions (model.max_seq_len) but seq_len="
            f"{cfg.seq_len}; set seq_len<={limit}"
        )
    if cfg.objective.hidden_weight > 0:
        _check_hidden(cfg, teacher, where)


def _check_hidden(cfg: TrainConfig, teacher, where: str) -> None:
    """Hidden-state matching compares the final states as they are (no learned projection,
    which would add params to the student's checkpoint): decoders of one width only."""
    student = cfg.model
    if student.kind != "decoder" or teacher.kind != "decoder":
        raise ConfigError(
            f"objective.hidden_weight={cfg.objective.hidden_weight} matches the final hidden "
            f"states of decoders, not model.kind={student.kind!r} against {where}'s "
            f"{teacher.kind!r}; set objective.hidden_weight=0"
        )
    if student.d_model != teacher.d_model:
        raise ConfigError(
            f"objective.hidden_weight={cfg.objective.hidden_weight} matches final hidden states, "
            f"which needs the student's model.d_model={student.d_model} to equal {where}'s "
            f"{teacher.d_model}; set model.d_model={teacher.d_model} or objective.hidden_weight=0"
        )
