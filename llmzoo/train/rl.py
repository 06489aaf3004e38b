"""PPO and GRPO: the loop of rollouts and updates (``objective.name=ppo`` or ``grpo``).

Each iteration ``i`` (``steps`` of them) uses the key ``fold_in(key(seed), i)`` for everything it
draws, so a resumed run repeats the uninterrupted one exactly:

1. Rollouts: ``batch_size`` completions of prompts drawn from the train split (GRPO:
   ``batch_size / group_size`` prompts, ``group_size`` completions each), sampled at
   ``objective.temperature`` by llmzoo's jitted generation, scored by the reward
   (:mod:`llmzoo.train.rollout`).
2. One forward pass of the policy and of the reference (the initial policy, rebuilt from
   ``init_from``) gives the old log-probs, the values and the KL; then the advantages: PPO's
   GAE over the KL-penalised rewards, GRPO's group-standardised rewards
   (:mod:`llmzoo.objectives.rl`).
3. ``ppo_epochs`` passes over the rollouts in ``minibatches`` shuffled minibatches, each an
   optimizer step of the one jitted :func:`~llmzoo.train.step.train_step`.

``steps`` counts iterations; the learning-rate schedule (``optim.warmup_steps`` too) counts
optimizer steps, ``ppo_epochs * minibatches`` an iteration.

``metrics.jsonl`` gets a record per iteration (reward, KL to the reference, entropy, clip
fraction, value loss, approx KL ...) and ``val_reward``, the mean reward of sampled completions
(a fixed seed) of validation prompts, before training and every ``eval_every`` iterations.
Checkpoints (Orbax, as ``llmzoo train``) hold the policy (with its value head), the optimizer
state and the KL coefficient; the reference is rebuilt from ``init_from``. One process only.
"""

from __future__ import annotations

import dataclasses
import functools
import os
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
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.objectives import rl
from llmzoo.train.divergence import DivergenceGuard
from llmzoo.train.loop import check_resume_config
from llmzoo.train.metrics import MetricsWriter, read_metrics
from llmzoo.train.optimizer import init_state, lr_schedule, make_optimizer
from llmzoo.train.rollout import Sampler, function_scorer, load_prompts, make_scorer
from llmzoo.train.setup import initial_params, resolve_init_from, resolve_teacher
from llmzoo.train.step import TrainState, make_steps


def check_rl_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the policy's model config from ``init_from`` (a value head for PPO).

    Raises:
        ConfigError: several processes, no ``init_from``, a policy that is not a decoder
            language model, or sizes that do not fit (batch, minibatches, groups, rollout
            length).
    """
    o = cfg.objective
    if jax.process_count() > 1:
        raise ConfigError(f"objective.name={o.name!r} runs on one process; start one process")
    if not cfg.init_from:
        raise ConfigError(
            f"objective.name={o.name!r} fine-tunes a pretrained policy; set init_from=RUN (a "
            "decoder language-model run)"
        )
    cfg = resolve_teacher(resolve_init_from(cfg))  # a teacher here is a one-line error
    if cfg.model.kind != "decoder" or cfg.model.head != "lm":
        raise ConfigError(
            f"objective.name={o.name!r} trains a decoder language model, not init_from="
            f"{cfg.init_from!r} (model.kind={cfg.model.kind!r}); init_from a causal LM run"
        )
    group = o.group_size if o.name == "grpo" else 1
    if cfg.batch_size % (group * o.minibatches):
        raise ConfigError(
            f"batch_size={cfg.batch_size} does not split into objective.minibatches="
            f"{o.minibatches} (and groups of objective.group_size={group}); change one"
        )
    if cfg.seq_len + 1 - o.rollout_tokens < 2 or cfg.seq_len >= cfg.model.max_seq_len:
        raise ConfigError(
            f"seq_len={cfg.seq_len} leaves no room for prompts of objective.rollout_tokens="
            f"{o.rollout_tokens} within model.max_seq_len={cfg.model.max_seq_len}; change one"
        )
    model = dataclasses.replace(cfg.model, value_head=o.name == "ppo")
    return dataclasses.replace(cfg, model=model)


def _policy_and_reference(cfg: TrainConfig, mesh, rules) -> tuple[dict, dict]:
    """The policy's initial params, laid out on ``mesh``: those of ``init_from``, plus (PPO) a
    fresh value head unless it has one; and the reference's: the same without a value head."""
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    params = initial_params(cfg, sharding.param_shardings(specs, mesh, rules))
    reference = {k: v for k, v in params.items() if k != "value_head"}
    # The reference keeps its own buffers: the train step donates the policy's.
    return params, jax.tree.map(jnp.copy, reference)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the iterations work with besides the train state."""

    cfg: TrainConfig
    prompts: dict[str, list[str]]  # by split
    sample: Sampler
    score: Callable  # (prompts, completions) -> [B] rewards
    reference: Any  # the reference policy's params
    train_fn: Callable  # the jitted train step
    batch_sharding: Any
    mesh: tuple  # (mesh, rules)

    def forward(self, params, rows: dict) -> dict:
        """:func:`llmzoo.objectives.rl.rollout_logprobs` of the policy and the reference."""
        model, t = self.cfg.model, self.cfg.objective.temperature
        ref_cfg = dataclasses.replace(model, value_head=False)
        return _forward(params, self.reference, rows, cfg=model, ref_cfg=ref_cfg, temperature=t)


# Jitted once a process: runs with equal settings share the compiled functions.
_forward = jax.jit(rl.rollout_logprobs, static_argnames=("cfg", "ref_cfg", "temperature"))
_advantages = jax.jit(rl.ppo_advantages, static_argnames=("gamma", "lam"))
_TRAIN_STEPS: dict = {}  # the last train step, by everything it depends on


def train_rl(
    cfg: TrainConfig,
    *,
    reward: Callable[[str, str], float] | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Trains (or resumes) a PPO or GRPO run in ``cfg.run_dir``.

    Args:
        cfg: the resolved config (``objective.name`` ppo or grpo, ``init_from`` the policy).
        reward: ``reward(prompt, completion) -> float``; None uses ``objective.reward``.
        stop_at: stop after this iteration (saving a checkpoint), as if interrupted.
        progress: show a progress bar. log: where status lines go.

    Returns:
        ``{'run_dir', 'step', 'reward', 'kl', 'val_reward', 'val_reward_start'}``: the last
        iteration's mean reward and KL, and the validation reward at the end and at the start.

    Raises:
        ConfigError: see :func:`check_rl_config`; no reward (neither ``reward`` nor
            ``objective.reward``), or minibatches the data-parallel devices do not divide.
    """
    score = function_scorer(reward) if reward is not None else make_scorer(cfg)
    cfg = check_rl_config(cfg)
    check_resume_config(cfg.run_dir, cfg)
    run, state, tokenizer = _setup(cfg, score)
    with ckpt.training_checkpoints(cfg.run_dir, max_to_keep=cfg.keep_checkpoints) as mngr:
        state, start, kl_coef = _restore(mngr, state, cfg.objective.kl_coef, log)
        ckpt.write_config(cfg.run_dir, cfg)
        ckpt.copy_tokenizer(tokenizer.path, cfg.run_dir)
        writer = MetricsWriter(cfg.run_dir, resume_step=start)
        last = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        try:
            summary = _loop(run, state, (start, last), kl_coef, (mngr, writer), progress)
        finally:
            writer.close()
    return {"run_dir": cfg.run_dir, **summary}


def _setup(cfg: TrainConfig, score) -> tuple[_Run, TrainState, Any]:
    """The run's mesh, prompts, policy and reference, train state and step, and tokenizer."""
    mesh = sharding.strategy_mesh(cfg.strategy, cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    rules = sharding.resolve_rules(cfg.sharding_rules)
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    batch_shard = sharding.batch_sharding(mesh, rules=rules)
    size, shards = cfg.batch_size // cfg.objective.minibatches, sharding.batch_shards(mesh, rules)
    if size % shards:
        raise ConfigError(
            f"minibatch {size} (batch_size/objective.minibatches) is not divisible by the "
            f"{shards} data-parallel devices; change batch_size or objective.minibatches"
        )
    tokenizer = ckpt.read_tokenizer(cfg.init_from)
    prompts = {s: load_prompts(cfg.data, s) for s in (cfg.data.train_split, cfg.data.eval_split)}
    policy, reference = _policy_and_reference(cfg, mesh, rules)
    state, train_fn = _train_state(cfg, policy, specs, batch_shard, mesh)
    sample = Sampler(cfg, tokenizer)
    run = _Run(cfg, prompts, sample, score, reference, train_fn, batch_shard, (mesh, rules))
    return run, state, tokenizer


def _train_state(cfg: TrainConfig, policy, specs, batch_shard, mesh):
    """The initial TrainState (the optimizer counts every minibatch step) and the train step."""
    o = cfg.objective
    tx = make_optimizer(cfg.optim, cfg.steps * o.ppo_epochs * o.minibatches, specs)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
        params=policy,
        opt_state=init_state(tx, policy, mesh),
    )
    if o.name == "ppo":
        loss = functools.partial(
            rl.ppo_loss, clip_eps=o.clip_eps, vf_coef=o.vf_coef, temperature=o.temperature
        )
    else:
        loss = functools.partial(
            rl.grpo_loss, clip_eps=o.clip_eps, beta=o.kl_coef, temperature=o.temperature
        )
    shardings = jax.tree.map(lambda x: x.sharding, state)
    leaves, tree = jax.tree.flatten(shardings)
    key = (cfg.model, cfg.optim, o, cfg.steps, batch_shard, tuple(leaves), tree)
    if key not in _TRAIN_STEPS:  # a resumed run in the same process reuses the compiled step
        _TRAIN_STEPS.clear()
        _TRAIN_STEPS[key] = make_steps(loss, cfg.model, tx, 1, shardings, batch_shard)[0]
    return state, _TRAIN_STEPS[key]


def _restore(mngr, state: TrainState, kl_coef: float, log) -> tuple[TrainState, int, float]:
    """The state, iteration and KL coefficient of the newest readable checkpoint, if any."""
    abstract = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )
    found = ckpt.restore_latest(mngr, abstract(state.params), abstract(state.opt_state))
    if found is None:
        return state, 0, kl_coef
    start, params, opt_state, meta = found
    step = jax.device_put(jnp.int32(meta["optimizer_step"]), state.step.sharding)
    log(f"resumed from iteration {start} in {os.path.dirname(str(mngr.directory))}")
    return TrainState(step=step, params=params, opt_state=opt_state), start, meta["kl_coef"]


def _loop(run: _Run, state: TrainState, span, kl_coef: float, outputs, progress: bool) -> dict:
    """Runs iterations ``span = (start, last)``: logging, evaluation and checkpoints."""
    (start, last), cfg = span, run.cfg
    mngr, writer = outputs
    guard = DivergenceGuard(cfg, mngr, start)
    summary: dict = {"step": last}
    if start == 0:
        writer.write({"step": 0, "val_reward": _evaluate(run, state.params)})
    bar = tqdm(range(start, last), initial=start, total=cfg.steps, disable=not progress,
               desc=cfg.objective.name, dynamic_ncols=True)  # fmt: skip
    for it in bar:
        state, rec, kl_coef = _iteration(run, state, it, kl_coef, guard)
        done = it + 1
        summary |= {"reward": rec["reward"], "kl": rec["kl"]}
        if done % cfg.log_every == 0 or done == last:
            writer.write(rec)
            bar.set_postfix(reward=f"{rec['reward']:.3f}", kl=f"{rec['kl']:.3f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            summary["val_reward"] = _evaluate(run, state.params)
            writer.write({"step": done, "val_reward": summary["val_reward"]})
        if done % cfg.ckpt_every == 0 or done == last:
            guard.check_state(state, done)
            meta = {"step": done, "optimizer_step": int(state.step), "kl_coef": kl_coef}
            ckpt.save(mngr, done, state.params, state.opt_state, meta | {"config": to_dict(cfg)})
    first = [r for r in read_metrics(cfg.run_dir) if r["step"] == 0 and "val_reward" in r]
    return summary | {"val_reward_start": first[0]["val_reward"] if first else None}


def _iteration(run: _Run, state: TrainState, it: int, kl_coef: float, guard):
    """One iteration: rollouts, advantages, updates. Returns ``(state, record, kl_coef)``."""
    cfg, o = run.cfg, run.cfg.objective
    key = jax.random.fold_in(jax.random.key(cfg.seed), it)
    rows, scores = _rollout(run, state.params, key)
    fwd = jax.device_get(run.forward(state.params, rows))
    rows, mask = _with_advantages(o, rows, scores, fwd, kl_coef), rows["loss_mask"]
    kl = float((rl.kl_k1(fwd["logp"], fwd["ref_logp"]) * mask).sum(1).mean())
    state, means = _update(run, state, rows, key, guard, it + 1)
    rec = {"step": it + 1, "reward": float(scores.mean()), "reward_std": float(scores.std())}
    rec |= {"kl": kl, "kl_coef": kl_coef, "completion_tokens": float(mask.sum(1).mean())}
    rec |= {"rollout_entropy": float((fwd["entropy"] * mask).sum() / max(mask.sum(), 1.0))}
    total = cfg.steps * o.ppo_epochs * o.minibatches
    rec |= means | {"lr": float(lr_schedule(cfg.optim, total)(int(state.step) - 1))}
    if o.name == "ppo":
        kl_coef = rl.adaptive_kl_coef(
            kl_coef, kl, cfg.batch_size, target=o.kl_target, horizon=o.kl_horizon
        )
    return state, rec, kl_coef


def _with_advantages(o, rows: dict, scores, fwd: dict, kl_coef: float) -> dict:
    """``rows`` plus what the loss reads: the old log-probs, and PPO's old values, advantages
    and returns, or GRPO's advantages (each row's, repeated) and reference log-probs."""
    mask = rows["loss_mask"]
    if o.name == "ppo":
        args = (scores, fwd["logp"], fwd["ref_logp"], fwd["values"], mask, kl_coef)
        adv, returns, _ = _advantages(*args, gamma=o.gamma, lam=o.lam)
        extra = {"old_values": fwd["values"], "advantages": adv, "returns": returns}
    else:
        adv = np.asarray(rl.group_advantages(scores, o.group_size))[:, None]
        extra = {"advantages": np.broadcast_to(adv, mask.shape), "ref_logp": fwd["ref_logp"]}
    return jax.device_get(rows | extra | {"old_logp": fwd["logp"]})


def _rollout(run: _Run, params, key) -> tuple[dict, np.ndarray]:
    """``(rows, scores [B])``: completions of train prompts drawn with ``key``."""
    cfg, o = run.cfg, run.cfg.objective
    group = o.group_size if o.name == "grpo" else 1
    pool, n = run.prompts[cfg.data.train_split], cfg.batch_size // group
    pick = jax.random.choice(jax.random.fold_in(key, 0), len(pool), (n,), replace=len(pool) < n)
    prompts = [pool[int(i)] for i in pick for _ in range(group)]
    seed = int(jax.random.randint(jax.random.fold_in(key, 1), (), 0, 2**31 - 1))
    rows, completions = run.sample(params, prompts, seed, o.temperature)
    return rows, run.score(prompts, completions)


def _update(run: _Run, state: TrainState, rows: dict, key, guard, done: int):
    """``ppo_epochs`` passes of ``minibatches`` optimizer steps over ``rows``; returns the state
    and the mean of each step metric."""
    o, b = run.cfg.objective, run.cfg.batch_size
    size, history = b // o.minibatches, []
    with sharding.use_mesh(*run.mesh):
        for epoch in range(o.ppo_epochs):
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 2 + epoch), b))
            for m in range(o.minibatches):
                idx = perm[m * size : (m + 1) * size]
                batch = jax.device_put({k: v[idx] for k, v in rows.items()}, run.batch_sharding)
                state, metrics = run.train_fn(state, batch, jax.random.key(run.cfg.seed))
                guard.push(done, metrics["finite"])
                history.append(metrics)
    guard.check()
    history = jax.device_get(history)
    skip = ("finite", "skipped", "tokens")
    return state, {k: float(np.mean([h[k] for h in history])) for k in history[0] if k not in skip}


def _evaluate(run: _Run, params) -> float:
    """The mean reward of completions of the first ``eval_batches * batch_size`` validation
    prompts, sampled as the rollouts are but with a fixed seed."""
    cfg = run.cfg
    prompts = run.prompts[cfg.data.eval_split][: cfg.eval_batches * cfg.batch_size]
    return _mean_reward(cfg, params, prompts, run.sample, run.score)


def _mean_reward(cfg: TrainConfig, params, prompts: list[str], sample, score) -> float:
    scores = []
    for i in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[i : i + cfg.batch_size]
        _, completions = sample(params, chunk, cfg.seed, cfg.objective.temperature)
        scores.append(score(chunk, completions))
    return float(np.concatenate(scores).mean())


def evaluate_rl_run(run_dir: str, *, split: str | None = None, max_batches: int | None = None):
    """The mean reward of a PPO/GRPO run's newest policy on ``split``'s prompts (the first
    ``max_batches * batch_size``, default ``eval_batches``), sampled as in training.

    Returns:
        ``{'step', 'split', 'objective', 'reward', 'prompts'}``.
    """
    cfg, params, step = ckpt.load_params(run_dir)
    split = split or cfg.data.eval_split
    prompts = load_prompts(cfg.data, split)[: (max_batches or cfg.eval_batches) * cfg.batch_size]
    sample = Sampler(cfg, ckpt.read_tokenizer(run_dir))
    reward = _mean_reward(cfg, params, prompts, sample, make_scorer(cfg))
    return {"step": step, "split": split, "objective": cfg.objective.name, "reward": reward,
            "prompts": len(prompts)}  # fmt: skip
