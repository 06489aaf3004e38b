"""The rollouts of PPO and GRPO: prompts, rewards, sampled completions and the rows they train on.

- Prompts: the prompts of preference records (:mod:`llmzoo.data.preferences`):
  ``data.dataset=synthetic_preferences[:tasks]`` (offline synthetic tasks) or a JSONL file of
  ``{'prompt', 'chosen', 'rejected'}`` records.
- Rewards (``objective.reward``): a synthetic task's reward function by name (``sort``, ``add``,
  ``end``), ``synthetic`` (each prompt's own task), ``word:WORD`` (the share of the completion's
  words that are WORD: "produce token X"), or ``run:DIR``, a reward-model run (a decoder or an
  encoder with a one-output ``sequence_classification`` head, e.g. of ``objective.name=reward``):
  the score is its logit on prompt + completion, encoded as the reward model was trained.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np

from llmzoo import run_dir as ckpt
from llmzoo.config import DataConfig, TrainConfig
from llmzoo.data.preferences import REWARD_FNS, load_preferences
from llmzoo.data.preferences import reward as synthetic_reward
from llmzoo.errors import ConfigError
from llmzoo.generate import generate
from llmzoo.models import registry
from llmzoo.objectives.preference import PreferenceExamples

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def load_prompts(data: DataConfig, split: str) -> list[str]:
    """The distinct prompts of the preference records of ``split``, in order."""
    records = load_preferences(data.dataset, split, data.eval_fraction)
    return list(dict.fromkeys(r["prompt"] for r in records))


def word_share(word: str) -> Callable[[str, str], float]:
    """A reward: the share of the completion's (whitespace-separated) words equal to ``word``."""

    def reward(prompt: str, completion: str) -> float:
        words = completion.split()
        return words.count(word) / len(words) if words else 0.0

    return reward


def reward_function(name: str) -> Callable[[str, str], float]:
    """The reward function ``name`` (see the module docstring).

    Raises:
        ConfigError: an unknown name, listing the known ones.
    """
    if name in REWARD_FNS:
        return REWARD_FNS[name]
    if name == "synthetic":
        return synthetic_reward
    if name.startswith("word:") and name[5:].strip():
        return word_share(name[5:].strip())
    raise ConfigError(
        f"objective.reward={name!r} is unknown; use {', '.join(REWARD_FNS)}, synthetic, "
        "word:WORD or run:DIR (a reward-model run)"
    )


def function_scorer(fn: Callable[[str, str], float]) -> Scorer:
    """A scorer of batches from ``fn(prompt, completion) -> float``: ``[B]`` float32."""
    return lambda prompts, completions: np.asarray(
        [fn(p, c) for p, c in zip(prompts, completions, strict=True)], np.float32
    )


class RewardModel:
    """A reward-model run as a scorer: its logit on ``[bos] + prompt + completion``, encoded by
    its own tokenizer exactly as :class:`~llmzoo.objectives.preference.PreferenceExamples`
    encoded its training pairs (one output, ``sequence_classification``)."""

    def __init__(self, run: str):
        cfg, self.params, _ = ckpt.load_params(run)
        model = cfg.model
        if getattr(model, "head", None) != "sequence_classification" or model.num_labels != 1:
            raise ConfigError(
                f"objective.reward='run:{run}' is not a reward model (model.head="
                f"{getattr(model, 'head', None)!r}); train one with objective.name=reward"
            )
        self.examples = PreferenceExamples(cfg, ckpt.read_tokenizer(run))
        self.apply = jax.jit(functools.partial(registry.get(model.kind).apply, cfg=model))

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        rows = [
            self.examples({"prompt": p, "chosen": c, "rejected": c})
            for p, c in zip(prompts, completions, strict=True)
        ]
        batch = {k: np.stack([r[f"chosen_{k}"] for r in rows]) for k in ("tokens", "segment_ids")}
        return np.asarray(self.apply(self.params, batch)["logits"][:, 0], np.float32)


def make_scorer(cfg: TrainConfig) -> Scorer:
    """The scorer of ``objective.reward``.

    Raises:
        ConfigError: no reward is set, or it names no reward function or reward model.
    """
    name = cfg.objective.reward
    if not name:
        raise ConfigError(
            f"objective.name={cfg.objective.name!r} needs a reward: set objective.reward to a "
            f"reward function ({', '.join(REWARD_FNS)}, synthetic, word:WORD) or run:DIR (a "
            "reward-model run)"
        )
    if name.startswith("run:"):
        return RewardModel(name[4:])
    return function_scorer(reward_function(name))


class Sampler:
    """Prompts -> token rows of prompt + sampled completion (see :func:`rollout_rows`).

    Args:
        cfg: the run's config: ``seq_len`` (T, the rows' length), ``objective.rollout_tokens``
            (R, the most new tokens), ``objective.temperature``.
        tokenizer: the policy's tokenizer; a prompt is ``[bos] + encode(prompt)``, cut from the
            left (after its bos) to at most T + 1 - R tokens.
    """

    def __init__(self, cfg: TrainConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        # Generation reads the LM only: PPO and GRPO policies share one compiled decoder.
        self.lm_cfg = dataclasses.replace(cfg.model, value_head=False)
        self.bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
        self.eos = tokenizer.eos_id
        self.room = cfg.seq_len + 1 - cfg.objective.rollout_tokens

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        return self.bos + ids[max(0, len(ids) + len(self.bos) - self.room) :]

    def __call__(self, params, prompts: Sequence[str], seed: int, temperature: float):
        """``(rows, completion texts)`` for one batch of prompts, sampled with ``seed``."""
        o = self.cfg.objective
        ids = [self.encode(p) for p in prompts]
        new = generate(
            {k: v for k, v in params.items() if k != "value_head"},
            ids,
            cfg=self.lm_cfg,
            max_new_tokens=o.rollout_tokens,
            temperature=temperature,
            stop_tokens=(self.eos,) if self.eos >= 0 else (),
            seed=seed,
        )
        texts = [self.tokenizer.decode([t for t in c if t != self.eos]) for c in new]
        return rollout_rows(ids, new, self.cfg.seq_len), texts


def rollout_rows(prompts: list[list[int]], completions: list[list[int]], row_len: int) -> dict:
    """Right-padded rows of ``prompt + completion`` (token ids), in target alignment.

    Args:
        prompts, completions: B lists of ids each; a prompt + completion has at most
            ``row_len + 1`` tokens.
        row_len: T.

    Returns:
        ``tokens`` (all but the last id), ``targets`` (all but the first), ``segment_ids`` (1 on
        real tokens) and ``loss_mask`` (1 where the target is a completion token), each
        ``[B, T]``: int32, int32, int32, float32.
    """
    b = len(prompts)
    out = {k: np.zeros((b, row_len), np.int32) for k in ("tokens", "targets", "segment_ids")}
    out["loss_mask"] = np.zeros((b, row_len), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        seq = np.asarray(p + c, np.int32)
        n = len(seq) - 1
        out["tokens"][i, :n], out["targets"][i, :n] = seq[:-1], seq[1:]
        out["segment_ids"][i, :n] = 1
        out["loss_mask"][i, len(p) - 1 : n] = 1.0
    return out
