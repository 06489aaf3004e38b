"""Objectives by name (``objective.name``): a loss, the examples it trains on, the kinds it fits.

Adding an objective: write its example builder in :mod:`llmzoo.objectives.examples` (packed rows
in, batches out), reuse or write a loss in :mod:`llmzoo.objectives.losses`, and add a line here
(and its name to ``llmzoo.config.OBJECTIVES``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llmzoo.config import TrainConfig
from llmzoo.errors import ConfigError
from llmzoo.layers import lora
from llmzoo.models import registry as models
from llmzoo.objectives import classify, distill, preference
from llmzoo.objectives.examples import make_examples
from llmzoo.objectives.losses import (
    sequence_classification_loss,
    token_classification_loss,
    token_loss,
)
from llmzoo.objectives.sft import sft_examples


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective.

    Attributes:
        loss: ``loss(params, batch, rng, *, cfg) -> (loss_sum, count, metrics)``, a static
            argument of the train and eval steps (with ``split``, also given ``frozen=``).
        kinds: the model kinds it trains.
        metrics: the names of the metric sums ``loss`` returns (each reported per count).
        examples: ``examples(cfg, tokenizer)`` builds its examples (see
            :mod:`llmzoo.objectives.examples`; record datasets: :mod:`llmzoo.data.records`);
            None for the pretraining objectives built by :func:`make_examples`.
        fit: ``fit(cfg) -> cfg`` fits the model config to the task (its head, its number of
            labels from the data) before the run starts; None leaves it.
        split: ``split(cfg, params) -> (trainable, frozen)``: what is trained and what the loss
            only reads (a DPO reference); None trains all params. An objective that learns from
            a teacher run (``distill``) gets ``teacher=(its model config, its params)`` too.
        eval_objective: the objective ``llmzoo eval`` scores this one's runs with (``distill``:
            ``causal_lm``, the student's own next-token loss, without its teacher); None: itself.
    """

    loss: Callable
    kinds: tuple[str, ...]
    metrics: tuple[str, ...] = ("accuracy",)
    examples: Callable | None = None
    fit: Callable | None = None
    split: Callable | None = None
    eval_objective: str | None = None


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(token_loss, ("decoder", "rnn", "mamba", "rwkv")),
    "mlm": Objective(token_loss, ("encoder",)),
    "span_corruption": Objective(token_loss, ("seq2seq",)),
    "denoising": Objective(token_loss, ("seq2seq",)),
    "reward": Objective(
        preference.reward_loss,
        ("decoder", "encoder"),
        ("accuracy", "margin"),
        examples=preference.PreferenceExamples,
        fit=preference.fit_reward,
    ),
    "dpo": Objective(
        preference.dpo_loss,
        ("decoder",),
        preference.PREFERENCE_METRICS,
        examples=preference.PreferenceExamples,
        fit=preference.fit_dpo,
        split=preference.split_reference,
    ),
    "distill": Objective(
        distill.distill_loss,
        distill.KINDS,
        distill.METRICS,
        split=distill.split_teacher,
        eval_objective="causal_lm",
    ),
    "sft": Objective(token_loss, ("decoder", "rnn", "mamba", "rwkv"), examples=sft_examples),
    "sequence_classification": Objective(
        sequence_classification_loss,
        ("encoder", "decoder"),
        examples=classify.make_task_examples,
        fit=classify.fit_head,
    ),
    "token_classification": Objective(
        token_classification_loss,
        ("encoder", "decoder"),
        examples=classify.make_task_examples,
        fit=classify.fit_head,
    ),
}


# Objectives that sample their own data (llmzoo.train.rl) rather than read examples.
ROLLOUT_OBJECTIVES = ("ppo", "grpo")


def get(name: str) -> Objective:
    """The objective ``name``; the error lists the known ones."""
    if name in ROLLOUT_OBJECTIVES:
        raise ConfigError(
            f"objective.name={name!r} trains by rollouts in its own loop: run it with `llmzoo "
            "train` or llmzoo.train.rl.train_rl, not llmzoo.train.loop.train"
        )
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"objective.name={name!r} is unknown; use one of {', '.join(OBJECTIVES)}"
        ) from None


def for_config(cfg: TrainConfig) -> Objective:
    """The objective of ``cfg``, checked against its model kind."""
    objective = get(cfg.objective.name)
    if cfg.model.kind not in objective.kinds:
        raise ConfigError(
            f"objective.name={cfg.objective.name!r} trains model kinds "
            f"{', '.join(objective.kinds)}, not model.kind={cfg.model.kind!r}; change one of them"
        )
    return objective


def fit_task(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its model fitted to the objective's task (see :attr:`Objective.fit`)."""
    fit = get(cfg.objective.name).fit
    return cfg if fit is None else fit(cfg)


def training_form(cfg: TrainConfig, objective: Objective, params, teacher=None) -> tuple:
    """What a run trains: ``(trainable, frozen, loss)`` from the model's full ``params``.

    ``trainable`` gets gradients and optimizer state, ``frozen`` (None, or a pytree) is handed
    to ``loss`` as ``frozen=`` and never changes; checkpoints hold ``trainable``. ``teacher``:
    ``(model config, params)`` of ``cfg.teacher``, loaded by the caller, for ``distill``.
    """
    if teacher is not None:  # the student trains all its params (no lora: see check_teacher)
        return *objective.split(cfg, params, teacher=teacher), objective.loss
    if cfg.lora is not None:  # adapters train over the frozen base (also DPO's reference)
        specs = models.get(cfg.model.kind).param_specs(cfg.model)
        split = objective.split
        reference = None if split is None else lambda base: split(cfg, base)[1]
        return lora.training_form(cfg, specs, params, objective.loss, reference)
    trainable, frozen = (params, None) if objective.split is None else objective.split(cfg, params)
    return trainable, frozen, objective.loss


def model_params(cfg: TrainConfig, trainable, frozen):
    """The plain params the model computes with (to sample, generate or export) from what
    :func:`training_form` trains: a LoRA run's base with its adapters merged in."""
    return trainable if cfg.lora is None else lora.merged_params(frozen, trainable, cfg.lora)


def build_examples(cfg: TrainConfig, tokenizer):
    """The example builder of ``cfg.objective`` for ``cfg.model`` and ``tokenizer``."""
    builder = get(cfg.objective.name).examples
    return make_examples(cfg, tokenizer) if builder is None else builder(cfg, tokenizer)
