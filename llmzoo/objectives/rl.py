"""Reinforcement learning from a reward: PPO (RLHF) and GRPO, as pure functions.

Per-token arrays are ``[B, T]`` in target alignment: position t of a row of tokens holds what
belongs to the action "emit token t + 1": its log-probability under the policy at position t,
the value of the state before it, and its reward. ``mask [B, T]`` is 1 on the completion's
actions (and 0 on the prompt and padding).

- PPO (Schulman et al., 2017) with a value head, GAE (Schulman et al., 2016) and the per-token
  KL penalty against the reference folded into the rewards, with the fixed or adaptive KL
  controller of Ziegler et al. (2019), as in Hugging Face TRL.
- GRPO (Shao et al., 2024, DeepSeekMath): no critic; the advantage of each of G completions of a
  prompt is its reward standardised within the group, and the loss carries the k3 KL estimate
  to the reference.

The two losses have the train step's signature ``loss(params, batch, rng, *, cfg, ...)`` with
their hyperparameters bound by ``functools.partial``; everything else here is a helper on arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.models import registry
from llmzoo.objectives.losses import token_nll


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean of ``x`` where ``mask`` is 1 (0 when nothing is counted). Any equal shapes."""
    mask = jnp.asarray(mask, jnp.float32)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def whiten(x: jax.Array, mask: jax.Array, *, shift_mean: bool = True, eps: float = 1e-8):
    """``(x - mean) / sqrt(var + eps)`` over the counted entries (TRL's ``masked_whiten``).

    The variance is unbiased (Bessel's correction); with ``shift_mean=False`` the mean is added
    back. Entries where ``mask`` is 0 come back as 0.

    Args:
        x, mask: ``[B, T]`` (any equal shapes).
    """
    mask = jnp.asarray(mask, jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    var = (jnp.square(x - mean) * mask).sum() / jnp.maximum(n - 1.0, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al., 2016), as TRL computes it.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` and ``A_t = delta_t + gamma lam A_{t+1}``, where
    ``V_{t+1}`` is 0 after a row's last action (the episode ended) unless ``values`` has a
    bootstrap column T and the row's action T - 1 is real (a truncated episode).

    Args:
        rewards: ``[B, T]`` per-action rewards.
        values: ``[B, T]``, or ``[B, T + 1]`` with the value of the state after the last column.
        mask: ``[B, T]`` 1 on real actions; zero-masked entries get 0 advantage and return.
        gamma: discount; lam: the GAE trade-off (1: Monte-Carlo returns minus V; 0: TD(0)).

    Returns:
        ``(advantages [B, T], returns [B, T])`` float32, ``returns = advantages + values``.
    """
    mask = jnp.asarray(mask, jnp.float32)
    t = rewards.shape[1]
    v = values[:, :t].astype(jnp.float32) * mask
    boot = values[:, t] * mask[:, -1] if values.shape[1] == t + 1 else jnp.zeros_like(v[:, 0])
    next_v = jnp.concatenate([v[:, 1:], boot[:, None]], axis=1)
    deltas = (rewards.astype(jnp.float32) + gamma * next_v - v) * mask

    def back(carry, delta):  # carry: A_{t+1} [B]
        adv = delta + gamma * lam * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(v[:, 0]), deltas.T, reverse=True)
    adv = adv.T * mask
    return adv, (adv + v) * mask


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0):
    """``log softmax(logits / temperature)[target]``: ``[B, T, V], [B, T] -> [B, T]`` float32.

    Rollouts sample at ``temperature``, so the policy's probabilities are taken at it too.
    """
    return -token_nll(logits.astype(jnp.float32) / temperature, targets)


def entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """The entropy of ``softmax(logits / temperature)``: ``[B, T, V] -> [B, T]`` float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1)


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """The k1 estimate of KL(policy || reference) from samples of the policy: ``logp - ref``.

    Unbiased, high variance, can be negative (Schulman, "Approximating KL divergence", 2020).
    ``[B, T], [B, T] -> [B, T]``.
    """
    return logp - ref_logp


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """The k3 estimate ``ref/p - log(ref/p) - 1`` of KL(policy || reference): unbiased and
    non-negative (GRPO's KL term, Shao et al., 2024, eq. 4). ``[B, T], [B, T] -> [B, T]``."""
    log_ratio = ref_logp - logp
    return jnp.exp(log_ratio) - log_ratio - 1.0


def kl_rewards(scores, logp, ref_logp, mask, kl_coef: float) -> jax.Array:
    """Per-action RLHF rewards (Ziegler et al., 2019): ``-kl_coef * k1`` on every action, plus
    the sequence's score on its last action.

    Args:
        scores: ``[B]`` the reward of each completion.
        logp, ref_logp: ``[B, T]`` log-probs of the taken actions under policy and reference.
        mask: ``[B, T]`` 1 on the completion's actions.
        kl_coef: beta, the KL penalty's weight.

    Returns:
        ``[B, T]`` float32, 0 where ``mask`` is 0.
    """
    mask = jnp.asarray(mask, jnp.float32)
    t = mask.shape[1]
    last = t - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # [B] the last action of each row
    at_last = (jnp.arange(t)[None, :] == last[:, None]) & (mask.sum(1, keepdims=True) > 0)
    penalty = -kl_coef * kl_k1(logp, ref_logp)
    return (penalty + at_last * scores[:, None].astype(jnp.float32)) * mask


def adaptive_kl_coef(
    kl_coef: float, kl: float, n_steps: int, *, target: float | None, horizon: int
) -> float:
    """The KL controller of Ziegler et al. (2019): the next ``kl_coef``.

    Fixed when ``target`` is None; otherwise ``kl_coef * (1 + e * n_steps / horizon)`` with the
    proportional error ``e = clip(kl / target - 1, -0.2, 0.2)`` (TRL's ``AdaptiveKLController``).

    Args:
        kl_coef: the current coefficient; kl: the measured KL (per sequence, summed over tokens).
        n_steps: the rollouts this update covers; target, horizon: the controller's settings.
    """
    if target is None:
        return kl_coef
    error = float(np.clip(kl / target - 1.0, -0.2, 0.2))
    return kl_coef * (1.0 + error * n_steps / horizon)


def clipped_policy_loss(logp, old_logp, advantages, mask, clip_eps: float):
    """The PPO clipped surrogate, summed over counted actions (Schulman et al., 2017, eq. 7).

    Per action: ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = exp(logp - old_logp)``.

    Args:
        logp, old_logp, advantages, mask: ``[B, T]``.
        clip_eps: epsilon.

    Returns:
        ``(loss_sum, count, {'clip_fraction': sum, 'approx_kl': sum})``: the actions whose
        clipped term is the larger one (the gradient is cut), and the k3 estimate of
        KL(old || new) ``(r - 1) - log r``, both summed over counted actions.
    """
    mask = jnp.asarray(mask, jnp.float32)
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    plain = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = jnp.maximum(plain, clipped)
    sums = {
        "clip_fraction": ((clipped > plain) * mask).sum(),
        "approx_kl": (((ratio - 1.0) - log_ratio) * mask).sum(),
    }
    return (loss * mask).sum(), mask.sum(), sums


def clipped_value_loss(values, old_values, returns, mask, clip_eps: float):
    """PPO's clipped value loss, summed over counted actions (TRL's ``cliprange_value``).

    Per action ``0.5 * max((v - R)^2, (clip(v, v_old - eps, v_old + eps) - R)^2)``.

    Args:
        values, old_values, returns, mask: ``[B, T]``.

    Returns:
        ``(loss_sum, value_clip_sum)``: the summed loss and the number of clipped actions.
    """
    mask = jnp.asarray(mask, jnp.float32)
    clipped_v = jnp.clip(values, old_values - clip_eps, old_values + clip_eps)
    plain, clipped = jnp.square(values - returns), jnp.square(clipped_v - returns)
    return (0.5 * jnp.maximum(plain, clipped) * mask).sum(), ((clipped > plain) * mask).sum()


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-4) -> jax.Array:
    """GRPO's outcome advantages: ``(r - mean_group) / (std_group + eps)``.

    Rows ``g * G .. g * G + G - 1`` are the G completions of one prompt. The standard deviation
    is unbiased (Bessel's correction), as in TRL's ``GRPOTrainer``.

    Args:
        rewards: ``[B]`` with B divisible by ``group_size`` G.

    Returns:
        ``[B]`` float32; a group whose rewards are all equal gets 0.
    """
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    mean = r.mean(axis=1, keepdims=True)
    std = jnp.std(r, axis=1, keepdims=True, ddof=1)
    return ((r - mean) / (std + eps)).reshape(-1)


def rollout_logprobs(params, ref_params, batch: dict, *, cfg, ref_cfg, temperature: float):
    """What the updates need from the rollouts, before any update: one forward pass of the
    policy and one of the reference.

    Args:
        params, ref_params: the policy's and the reference's params.
        batch: ``tokens, segment_ids, targets [B, T]``.
        cfg, ref_cfg: their model configs (the policy's may add a value head).
        temperature: the sampling temperature.

    Returns:
        ``{'logp', 'ref_logp', 'entropy', 'values'}``, each ``[B, T]`` float32 (values 0
        without a value head).
    """
    out, logp, ent = _policy_outputs(params, batch, None, cfg, temperature)
    ref = registry.get(ref_cfg.kind).apply(ref_params, batch, cfg=ref_cfg)
    ref_logp = token_logprobs(ref["logits"], batch["targets"], temperature)
    values = out.get("values", jnp.zeros_like(logp)).astype(jnp.float32)
    return {"logp": logp, "ref_logp": ref_logp, "entropy": ent, "values": values}


def ppo_advantages(scores, logp, ref_logp, values, mask, kl_coef, *, gamma: float, lam: float):
    """PPO's rewards, whitened advantages and returns from one batch of rollouts.

    Rewards are :func:`kl_rewards`; advantages and returns are :func:`gae` (no bootstrap: every
    completion ends the episode), the advantages then whitened over the batch's actions.

    Args:
        scores: ``[B]``; logp, ref_logp, values, mask: ``[B, T]``; kl_coef: a scalar.

    Returns:
        ``(advantages, returns, rewards)``, each ``[B, T]`` float32.
    """
    rewards = kl_rewards(scores, logp, ref_logp, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return whiten(advantages, mask), returns, rewards


def _policy_outputs(params, batch, rng, cfg, temperature):
    """The model's outputs on a rollout batch and the log-probs and entropy of its actions."""
    out = registry.get(cfg.kind).apply(params, batch, cfg=cfg, rng=rng)
    logp = token_logprobs(out["logits"], batch["targets"], temperature)
    ent = jax.lax.stop_gradient(entropy(out["logits"], temperature))
    return out, logp, ent


def ppo_loss(params, batch: dict, rng, *, cfg, clip_eps: float, vf_coef: float, temperature):
    """PPO's loss on a minibatch of rollouts: clipped policy loss + ``vf_coef`` x value loss.

    Args:
        params: the policy's params (a decoder with ``value_head``).
        batch: ``tokens, segment_ids, targets [B, T]`` (the rollout rows) and, per action,
            ``loss_mask`` (1 on the completion), ``old_logp``, ``old_values``, ``advantages``
            (whitened) and ``returns``, all ``[B, T]``.
        rng: dropout key or None; cfg: the model config.
        clip_eps: epsilon of both clips; vf_coef: the value loss weight; temperature: the
            rollouts' sampling temperature.

    Returns:
        ``(loss_sum, count, sums)`` over the counted actions; ``sums``: ``policy_loss``,
        ``value_loss``, ``clip_fraction``, ``value_clip_fraction``, ``approx_kl``, ``entropy``.
    """
    out, logp, ent = _policy_outputs(params, batch, rng, cfg, temperature)
    mask = batch["loss_mask"]
    pg_sum, count, sums = clipped_policy_loss(
        logp, batch["old_logp"], batch["advantages"], mask, clip_eps
    )
    vf_sum, vf_clip = clipped_value_loss(
        out["values"].astype(jnp.float32), batch["old_values"], batch["returns"], mask, clip_eps
    )
    sums |= {"policy_loss": pg_sum, "value_loss": vf_sum, "value_clip_fraction": vf_clip}
    sums["entropy"] = (ent * mask).sum()
    return pg_sum + vf_coef * vf_sum, count, sums


def grpo_loss(params, batch: dict, rng, *, cfg, clip_eps: float, beta: float, temperature):
    """GRPO's loss (Shao et al., 2024, eq. 3), summed over the completions of a minibatch.

    Per completion i, the mean over its actions of ``-(min(r A_i, clip(r, 1 - eps, 1 + eps)
    A_i) - beta k3)``, with ``k3`` the KL estimate to the reference (:func:`kl_k3`).

    Args:
        params: the policy's params.
        batch: ``tokens, segment_ids, targets [B, T]`` and per action ``loss_mask``,
            ``old_logp``, ``ref_logp`` and ``advantages`` (each row's, repeated), ``[B, T]``.
        rng, cfg: as :func:`ppo_loss`; clip_eps: epsilon; beta: the KL weight; temperature:
            the rollouts' sampling temperature.

    Returns:
        ``(loss_sum, count, sums)`` with count the completions with at least one action;
        ``sums`` (each a sum of per-completion means): ``policy_loss``, ``ref_kl_k3``,
        ``clip_fraction``, ``approx_kl``, ``entropy``.
    """
    _, logp, ent = _policy_outputs(params, batch, rng, cfg, temperature)
    loss_sum, count, sums = grpo_terms(
        logp,
        batch["old_logp"],
        batch["ref_logp"],
        batch["advantages"],
        batch["loss_mask"],
        clip_eps=clip_eps,
        beta=beta,
    )
    weight = batch["loss_mask"] / jnp.maximum(batch["loss_mask"].sum(1, keepdims=True), 1.0)
    return loss_sum, count, sums | {"entropy": (ent * weight).sum()}


def grpo_terms(logp, old_logp, ref_logp, advantages, mask, *, clip_eps: float, beta: float):
    """The arithmetic of :func:`grpo_loss` on log-probs.

    Args:
        logp, old_logp, ref_logp, mask: ``[B, T]``; advantages: ``[B]`` (or ``[B, T]``, the
            same along each row).

    Returns:
        ``(loss_sum, count, {'policy_loss', 'ref_kl_k3', 'clip_fraction', 'approx_kl'})``: each a
        sum over completions of the mean over its actions; count the completions with actions.
    """
    mask = jnp.asarray(mask, jnp.float32)
    n = mask.sum(1)  # [B] actions per completion
    weight = mask / jnp.maximum(n, 1.0)[:, None]  # each completion's mean over its actions
    adv = jnp.broadcast_to(advantages.reshape(mask.shape[0], -1).astype(jnp.float32), mask.shape)
    pg_sum, _, sums = clipped_policy_loss(logp, old_logp, adv, weight, clip_eps)
    kl_sum = (kl_k3(logp, ref_logp) * weight).sum()
    sums |= {"policy_loss": pg_sum, "ref_kl_k3": kl_sum}
    return pg_sum + beta * kl_sum, (n > 0).sum().astype(jnp.float32), sums
