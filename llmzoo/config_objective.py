"""The ``objective`` section of :class:`llmzoo.config.TrainConfig`: what a run trains the model
to predict, and the settings of each objective (:mod:`llmzoo.objectives`)."""

from __future__ import annotations

import dataclasses

from llmzoo.config_rules import check_rules
from llmzoo.errors import ConfigError

OBJECTIVES = (
    "causal_lm",
    "mlm",
    "span_corruption",
    "denoising",
    "sequence_classification",
    "token_classification",
    "sft",
    "reward",
    "dpo",
    "ppo",
    "grpo",
    "distill",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """What the model is trained to predict, and how its inputs are corrupted.

    Attributes:
        name: ``causal_lm`` (next token), ``mlm`` (BERT masked LM), ``span_corruption`` (T5),
            ``denoising`` (BART text infilling and sentence permutation), or a fine-tuning
            objective (``init_from`` a pretrained run): ``sequence_classification``,
            ``token_classification`` (NER), ``sft`` (instruction tuning), ``reward`` (a
            pairwise reward model), ``dpo`` (direct preference optimisation), ``ppo`` or
            ``grpo`` (reinforcement learning from a reward: :mod:`llmzoo.train.rl`).
        mask_prob: mlm: fraction of tokens selected for prediction (80% masked, 10% random,
            10% kept).
        whole_word: mlm: select whole words rather than single pieces.
        noise_density: span_corruption: fraction of tokens corrupted.
        mean_span_length: span_corruption: mean length of a corrupted span.
        mask_ratio: denoising: fraction of tokens masked by text infilling.
        poisson_lambda: denoising: mean of the Poisson span lengths.
        permute_sentences: denoising: shuffle the sentences of each example.
        beta: dpo: the strength of the KL tie to the reference (the inverse temperature of
            the implicit reward); the reward model ignores it.
        preference_loss: dpo: ``sigmoid`` (DPO, Rafailov et al. 2023), ``ipo`` (Azar et al.
            2023) or ``simpo`` (Meng et al. 2024: no reference model); see
            :mod:`llmzoo.objectives.preference`.
        simpo_gamma: dpo with ``simpo``: the target reward margin gamma.
        reward: ppo, grpo: what scores a completion: a synthetic task's reward (``sort``,
            ``add``, ``end``; ``synthetic``: each prompt's own), ``word:WORD`` (the share of
            its words that are WORD) or ``run:DIR``, a reward-model run (head
            ``sequence_classification`` with one label; the score is its logit). See
            :mod:`llmzoo.train.rollout`.
        kl_coef: ppo: the weight of the per-token KL penalty to the reference in the rewards
            (its start value when adaptive); grpo: beta, the weight of the KL term.
        kl_target, kl_horizon: ppo: adapt ``kl_coef`` towards this KL per completion (Ziegler
            et al. 2019) over this horizon of rollouts; None (default) keeps it fixed.
        clip_eps: ppo, grpo: epsilon of the clipped ratio (and of PPO's clipped value loss).
        vf_coef: ppo: the weight of the value loss.
        gamma, lam: ppo: the discount and the GAE lambda.
        ppo_epochs, minibatches: ppo, grpo: passes over each iteration's rollouts, and the
            optimizer steps (minibatches) of each pass.
        group_size: grpo: completions sampled per prompt (``batch_size`` of them per iteration).
        rollout_tokens: ppo, grpo: the most tokens a completion has.
        temperature: ppo, grpo: the sampling temperature of the rollouts.
        kd_temperature: distill: the temperature tau of the teacher's and the student's
            softmax in the soft loss (Hinton et al. 2015), which is scaled by ``tau ** 2``.
        kd_weight: distill: the weight of the soft (KL to the teacher) loss; the hard-label
            (next-token) loss gets ``1 - kd_weight``.
        hidden_weight: distill: the weight of a term matching the student's final hidden
            states to the teacher's (0: none); needs equal widths (``model.d_model``).
    """

    name: str = "causal_lm"
    mask_prob: float = 0.15
    whole_word: bool = False
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    beta: float = 0.1
    preference_loss: str = "sigmoid"
    simpo_gamma: float = 0.5
    reward: str = ""
    kl_coef: float = 0.05
    kl_target: float | None = None
    kl_horizon: int = 10000
    clip_eps: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 4
    minibatches: int = 1
    group_size: int = 4
    rollout_tokens: int = 16
    temperature: float = 1.0
    kd_temperature: float = 2.0
    kd_weight: float = 0.5
    hidden_weight: float = 0.0

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ConfigError(
                f"objective.name={self.name!r} is unknown; use one of {', '.join(OBJECTIVES)}"
            )
        check_rules(self, "objective.")
