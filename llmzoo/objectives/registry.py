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
from llmzoo.objectives.losses import token_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective.

    Attributes:
        loss: ``loss(params, batch, rng, *, cfg) -> (loss_sum, count, metrics)``, a static
            argument of the train and eval steps.
        kinds: the model kinds it trains.
        metrics: the names of the metric sums ``loss`` returns (each reported per count).
    """

    loss: Callable
    kinds: tuple[str, ...]
    metrics: tuple[str, ...] = ("accuracy",)


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(token_loss, ("decoder", "rnn", "mamba", "rwkv")),
    "mlm": Objective(token_loss, ("encoder",)),
    "span_corruption": Objective(token_loss, ("seq2seq",)),
    "denoising": Objective(token_loss, ("seq2seq",)),
}


def get(name: str) -> Objective:
    """The objective ``name``; the error lists the known ones."""
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
