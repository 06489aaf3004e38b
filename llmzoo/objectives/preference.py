"""Learning from preference pairs: a Bradley-Terry reward model, and DPO / IPO / SimPO.

Each record ``{'prompt', 'chosen', 'rejected'}`` (:mod:`llmzoo.data.preferences`) becomes one
example of two fixed-length rows (:class:`PreferenceExamples`). Both losses score the chosen and
the rejected rows of a batch in one forward pass, concatenated on the batch axis (``[2B, T]``),
and count pairs: ``loss_sum`` and every metric are sums over the pairs whose ``example_mask`` is 1.

- ``reward`` (:func:`reward_loss`): a model with a one-output ``sequence_classification`` head
  scores each row (a decoder at its last real token, an encoder at its first, ``[CLS]``, token);
  the loss is ``-log sigmoid(r_c - r_r)`` (Bradley and Terry, 1952; Ouyang et al., 2022).
- ``dpo`` (:func:`dpo_loss`): a decoder policy against a frozen copy of its initial params (the
  reference, the objective's ``split``); ``objective.preference_loss`` picks the loss of
  :func:`preference_losses`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from llmzoo.config import DataConfig, TrainConfig
from llmzoo.data.preferences import load_preferences
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.objectives.losses import token_nll

SIDES = ("chosen", "rejected")


class PreferenceExamples:
    """Preference records -> examples of two rows of ``row_len = seq_len`` tokens each.

    A side (``chosen`` or ``rejected``) is the sequence ``[bos] + prompt + response + [eos]``
    (each text tokenized on its own; bos/eos only if the tokenizer has them), cut into
    ``<side>_tokens`` (all but the last token) and ``<side>_targets`` (all but the first),
    right-padded with zeros to ``row_len``, with ``<side>_segment_ids`` (1 on real tokens) and
    ``<side>_loss_mask`` (1 where the target is a response token, its eos included), and
    ``example_mask`` 1 (0 on the loader's padding rows).

    Too long for ``row_len + 1`` tokens: the prompt is cut from the left (its bos kept) to
    ``max(row_len + 1 - longest response, (row_len + 1) // 2)`` tokens, the same for both sides
    so that they share one prompt, then each response is cut from the right to fit (losing its
    eos first). A response cut to the same tokens as the other side scores a tie.
    """

    records = True
    pack = False

    def __init__(self, cfg: TrainConfig, tokenizer):
        self.row_len = cfg.seq_len
        self.tokenizer = tokenizer
        self.bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
        self.eos = [tokenizer.eos_id] if tokenizer.eos_id >= 0 else []

    def load(self, data: DataConfig, split: str) -> Sequence[dict]:
        """The preference records of ``split`` (see :func:`load_preferences`)."""
        return load_preferences(data.dataset, split, data.eval_fraction)

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        encode = self.tokenizer.encode
        prompt = self.bos + encode(record["prompt"])
        responses = {side: encode(record[side]) + self.eos for side in SIDES}
        budget = self.row_len + 1
        keep = max(budget - max(map(len, responses.values())), budget // 2)
        if len(prompt) > keep:
            prompt = self.bos + prompt[len(prompt) - keep + len(self.bos) :]
        example = {"example_mask": np.float32(1.0)}
        for side, response in responses.items():
            row = self._row(prompt, response[: budget - len(prompt)])
            example |= {f"{side}_{key}": value for key, value in row.items()}
        return example

    def _row(self, prompt: list[int], response: list[int]) -> dict[str, np.ndarray]:
        """One side's ``tokens, targets, segment_ids, loss_mask``, each ``[row_len]``."""
        seq = np.asarray(prompt + response, np.int32)
        n, t = len(seq) - 1, self.row_len
        pad = (0, t - n)
        loss_mask = (np.arange(n) >= len(prompt) - 1).astype(np.float32)
        return {
            "tokens": np.pad(seq[:-1], pad),
            "targets": np.pad(seq[1:], pad),
            "segment_ids": np.pad(np.ones(n, np.int32), pad),
            "loss_mask": np.pad(loss_mask, pad),
        }


def pair_rows(batch: dict, keys=("tokens", "segment_ids")) -> dict:
    """Both sides' ``keys`` (the model inputs by default), chosen rows first: ``[2B, T]``."""
    return {key: jnp.concatenate([batch[f"{side}_{key}"] for side in SIDES]) for key in keys}


def _halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[2B, ...]`` -> the chosen ``[B, ...]`` and the rejected ``[B, ...]``."""
    b = x.shape[0] // 2
    return x[:b], x[b:]


def bradley_terry(chosen: jax.Array, rejected: jax.Array, mask: jax.Array) -> tuple:
    """The Bradley-Terry loss of scores ``chosen, rejected [B]`` over the pairs ``mask [B]``.

    Returns:
        ``(loss_sum, count, {'accuracy', 'margin'})``: ``sum -log sigmoid(r_c - r_r)``, the
        number of pairs, and the sums of ``r_c > r_r`` (a tie counts as wrong) and ``r_c - r_r``.
    """
    margin = chosen.astype(jnp.float32) - rejected.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    loss_sum = (jax.nn.softplus(-margin) * mask).sum()  # -log sigmoid(m) = softplus(-m)
    metrics = {"accuracy": ((margin > 0) * mask).sum(), "margin": (margin * mask).sum()}
    return loss_sum, mask.sum(), metrics


def reward_loss(params, batch: dict, rng, *, cfg) -> tuple[jax.Array, jax.Array, dict]:
    """The reward model's loss: :func:`bradley_terry` on the scores ``logits [2B, 1]`` of a
    one-output ``sequence_classification`` head over the chosen and rejected rows (a decoder
    reads its last input token, the response's last: the eos is only a target)."""
    out = registry.get(cfg.kind).apply(params, pair_rows(batch), cfg=cfg, rng=rng)
    chosen, rejected = _halves(out["logits"][:, 0])
    return bradley_terry(chosen, rejected, batch["example_mask"])


def check_data(cfg: TrainConfig) -> None:
    """Reads both splits, so that a bad record stops the run before any other work."""
    d = cfg.data
    for split in (d.train_split, d.eval_split):
        load_preferences(d.dataset, split, d.eval_fraction)


def fit_reward(cfg: TrainConfig) -> TrainConfig:
    """A one-output ``sequence_classification`` head (the pretrained LM head is dropped; an
    encoder's reads the ``[CLS]`` state through its pooler), once the data is checked."""
    check_data(cfg)
    pooler = {"pooler": True} if cfg.model.kind == "encoder" else {}
    model = dataclasses.replace(cfg.model, head="sequence_classification", num_labels=1, **pooler)
    return dataclasses.replace(cfg, model=model)


@struct.dataclass
class Reference:
    """What DPO's loss reads but does not train (the objective's ``frozen``): the reference
    params (None for SimPO, which has none) and the loss settings, which are static (part of
    the pytree's structure, so a jitted step compiles them in)."""

    params: Any
    beta: float = struct.field(pytree_node=False, default=0.1)
    loss_type: str = struct.field(pytree_node=False, default="sigmoid")
    gamma: float = struct.field(pytree_node=False, default=0.5)


def split_reference(cfg: TrainConfig, params) -> tuple[Any, Reference]:
    """DPO's ``(trainable, frozen)``: the params, and a :class:`Reference` holding a copy of
    them (its own buffers, so that donating the trained params leaves it intact)."""
    o = cfg.objective
    ref = None if o.preference_loss == "simpo" else jax.tree.map(jnp.copy, params)
    return params, Reference(ref, beta=o.beta, loss_type=o.preference_loss, gamma=o.simpo_gamma)


def fit_dpo(cfg: TrainConfig) -> TrainConfig:
    """Checks the data; DPO trains a language-model head, any other is an error naming the fix."""
    check_data(cfg)
    head = getattr(cfg.model, "head", "lm")
    if head != "lm":
        raise ConfigError(
            f"objective.name='dpo' trains a policy with an LM head, not model.head={head!r}; "
            "init_from a language-model run (pretrained or SFT)"
        )
    return cfg


def sequence_logps(logits: jax.Array, batch_rows: dict) -> tuple[jax.Array, jax.Array]:
    """Summed log-probs of the response tokens, and their number.

    Args:
        logits: ``[2B, T, V]``.
        batch_rows: ``targets, loss_mask [2B, T]``.

    Returns:
        ``(logps [2B], lengths [2B])`` float32.
    """
    mask = batch_rows["loss_mask"].astype(jnp.float32)
    return -(token_nll(logits, batch_rows["targets"]) * mask).sum(-1), mask.sum(-1)


def token_kl(policy_logits: jax.Array, ref_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """``[2B]``: ``sum_t mask * KL(policy_t || reference_t)`` of the next-token distributions
    ``[2B, T, V]`` along each row's response (a number no sampling can make negative)."""
    logp = jax.nn.log_softmax(policy_logits.astype(jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
    kl = (jnp.exp(logp) * (logp - logq)).sum(-1)
    return (kl * mask.astype(jnp.float32)).sum(-1)


def preference_losses(
    policy: jax.Array,
    reference: jax.Array | None,
    lengths: jax.Array,
    *,
    beta: float,
    loss_type: str,
    gamma: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Per-pair losses and implicit rewards from sequence log-probs.

    With ``p`` the policy's and ``r`` the reference's summed response log-probs (``[2, B]``:
    chosen, rejected) and ``|y|`` the response lengths:

    - ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta ((p_c - r_c) - (p_r - r_r)))``;
      rewards ``beta (p - r)``.
    - ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2`` with ``h = (p_c - r_c) - (p_r - r_r)``
      on log-probs averaged over each response's tokens (TRL's convention, which keeps
      ``1 / (2 beta)`` on the scale of a per-token log-ratio); rewards ``beta (p - r) / |y|``.
    - ``simpo`` (Meng et al. 2024): ``-log sigmoid(beta p_c / |y_c| - beta p_r / |y_r| - gamma)``,
      no reference; rewards ``beta p / |y|``.

    Args:
        policy: ``[2, B]`` summed log-probs under the policy.
        reference: ``[2, B]`` under the reference (unused, may be None, for ``simpo``).
        lengths: ``[2, B]`` response tokens (counted targets).
        beta, gamma: the loss's settings.
        loss_type: ``sigmoid``, ``ipo`` or ``simpo``.

    Returns:
        ``(losses [B], rewards [2, B])``.
    """
    per_token = jnp.maximum(lengths, 1.0)
    if loss_type == "simpo":
        rewards = beta * policy / per_token
        return jax.nn.softplus(-(rewards[0] - rewards[1] - gamma)), rewards
    ratio = policy - reference
    if loss_type == "ipo":
        ratio = ratio / per_token
        h = ratio[0] - ratio[1]
        return (h - 1.0 / (2.0 * beta)) ** 2, beta * ratio
    if loss_type == "sigmoid":
        rewards = beta * ratio
        return jax.nn.softplus(-(rewards[0] - rewards[1])), rewards
    raise ConfigError(f"objective.preference_loss={loss_type!r}; use sigmoid, ipo or simpo")


def dpo_loss(params, batch: dict, rng, *, cfg, frozen: Reference):
    """DPO (or IPO, SimPO: ``frozen.loss_type``) on a batch of preference pairs.

    One policy forward and (without SimPO) one reference forward over ``[2B, T]``.

    Returns:
        ``(loss_sum, count, metrics)``: count is the number of pairs; metric sums ``accuracy``
        (the chosen implicit reward is the larger), ``margin`` (chosen minus rejected reward),
        ``chosen_reward``, ``rejected_reward``, and ``kl`` (:func:`token_kl`, the mean of the
        chosen and rejected rows; 0 for SimPO, which has no reference).
    """
    model = registry.get(cfg.kind)
    inputs, rows = pair_rows(batch), pair_rows(batch, ("targets", "loss_mask"))
    logits = model.apply(params, inputs, cfg=cfg, rng=rng)["logits"]
    policy, lengths = sequence_logps(logits, rows)
    reference, kl = None, jnp.zeros_like(policy)
    if frozen.params is not None:
        ref_logits = jax.lax.stop_gradient(model.apply(frozen.params, inputs, cfg=cfg)["logits"])
        reference = sequence_logps(ref_logits, rows)[0].reshape(2, -1)
        kl = token_kl(logits, ref_logits, rows["loss_mask"])
    losses, rewards = preference_losses(
        policy.reshape(2, -1),
        reference,
        lengths.reshape(2, -1),
        beta=frozen.beta,
        loss_type=frozen.loss_type,
        gamma=frozen.gamma,
    )
    mask = batch["example_mask"].astype(jnp.float32)
    margin = rewards[0] - rewards[1]
    metrics = {
        "accuracy": (margin > 0) * mask,
        "margin": margin * mask,
        "chosen_reward": rewards[0] * mask,
        "rejected_reward": rewards[1] * mask,
        "kl": kl.reshape(2, -1).mean(0) * mask,
    }
    return (losses * mask).sum(), mask.sum(), {k: v.sum() for k, v in metrics.items()}


PREFERENCE_METRICS = ("accuracy", "margin", "chosen_reward", "rejected_reward", "kl")
