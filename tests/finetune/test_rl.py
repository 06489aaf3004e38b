"""PPO and GRPO: the pure pieces against hand-computed values, then short runs that must raise
a computable reward while staying near the reference."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.models import decoder
from llmzoo.objectives import rl
from llmzoo.presets import resolve_train_config
from llmzoo.run_dir import load_params, read_config, read_tokenizer, tokenizer_path, write_run
from llmzoo.train.metrics import read_metrics
from llmzoo.train.rl import train_rl
from llmzoo.train.rollout import make_scorer


def quiet(*args, **kwargs):
    pass


# GAE: two rows of four actions; row 0 ends after three actions, row 1 runs to the end.
REWARDS = np.array([[1.0, 0.0, 2.0, 0.0], [0.5, -1.0, 0.0, 3.0]], np.float32)
VALUES = np.array([[0.1, 0.2, 0.3, 9.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)


def gae_by_sums(rewards, values, mask, gamma, lam, boot=None):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over a row's real actions (no recursion)."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        end = boot[b] if boot is not None and n == rewards.shape[1] else 0.0
        v_next = [values[b, t + 1] if t + 1 < n else end for t in range(n)]
        deltas = [rewards[b, t] + gamma * v_next[t] - values[b, t] for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    return adv


def test_gae_hand_computed_row():
    adv, ret = rl.gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    # delta = (1.08, 0.07, 1.7); A_2 = 1.7, A_1 = 0.07 + 0.72 * 1.7, A_0 = 1.08 + 0.72 * A_1
    np.testing.assert_allclose(adv[0], [2.01168, 1.294, 1.7, 0.0], rtol=1e-5)
    np.testing.assert_allclose(ret[0], [2.11168, 1.494, 2.0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(adv, gae_by_sums(REWARDS, VALUES, MASK, 0.9, 0.8), atol=1e-5)


def test_gae_special_cases_and_bootstrap():
    # gamma = lam = 1: the reward-to-go minus the value; lam = 0: the one-step TD error.
    adv, ret = rl.gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv[0, :3], [3.0 - 0.1, 2.0 - 0.2, 2.0 - 0.3], rtol=1e-6)
    np.testing.assert_allclose(ret[1], [2.5, 2.0, 3.0, 3.0], rtol=1e-6)
    adv, _ = rl.gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.0)
    np.testing.assert_allclose(adv[0, :3], [1.08, 0.07, 1.7], rtol=1e-5)
    # A bootstrap column counts only for a row whose last column is a real action.
    boot = np.array([[5.0], [10.0]], np.float32)
    adv, _ = rl.gae(REWARDS, np.concatenate([VALUES, boot], 1), MASK, gamma=0.9, lam=0.8)
    want = gae_by_sums(REWARDS, VALUES, MASK, 0.9, 0.8, boot=boot[:, 0])
    np.testing.assert_allclose(adv, want, atol=1e-5)
    assert adv[1, 3] == pytest.approx(3.0 + 0.9 * 10.0 - 4.0, rel=1e-6)


def test_whiten_and_group_advantages():
    x = np.array([[1.0, 2.0, 3.0, 100.0]], np.float32)
    m = np.array([[1, 1, 1, 0]], np.float32)
    # mean 2, unbiased var 1 over the counted entries
    np.testing.assert_allclose(rl.whiten(x, m), [[-1.0, 0.0, 1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(rl.whiten(x, m, shift_mean=False), [[1, 2, 3, 0]], atol=1e-6)
    adv = rl.group_advantages(np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # mean 0.5, unbiased std sqrt(1/3)
    np.testing.assert_allclose(adv, [a, -a, -a, a, 0, 0, 0, 0], rtol=1e-6)


def test_ppo_clipped_losses_hand_computed():
    ratio = np.array([[1.5, 0.5, 1.1, 0.5, 2.0, 3.0]])
    adv = np.array([[1.0, 1.0, -1.0, -1.0, -1.0, 5.0]], np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
    old = np.full_like(adv, -2.0)
    loss, count, sums = rl.clipped_policy_loss(old + np.log(ratio), old, adv, mask, 0.2)
    # per action: -1.2 (clipped), -0.5, 1.1, 0.8 (clipped), 2.0; the last is masked
    assert float(loss) == pytest.approx(2.2, rel=1e-5)
    assert float(count) == 5 and float(sums["clip_fraction"]) == 2
    r = ratio[0, :5]
    assert float(sums["approx_kl"]) == pytest.approx(np.sum(r - 1 - np.log(r)), rel=1e-5)
    values, old_v = np.array([[1.0, 0.0, 0.6]]), np.array([[0.5, 0.5, 0.5]])
    vf, vf_clip = rl.clipped_value_loss(values, old_v, np.array([[2.0, 0.0, 2.0]]), 1.0, 0.2)
    # (0.7 - 2)^2 = 1.69 and (0.3 - 0)^2 = 0.09 clipped, (0.6 - 2)^2 = 1.96 not
    assert float(vf) == pytest.approx(0.5 * (1.69 + 0.09 + 1.96), rel=1e-5)
    assert float(vf_clip) == 2


def test_grpo_terms_hand_computed():
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    logp = np.full((2, 3), -1.0, np.float32)
    ref = logp + np.array([[0.0, math.log(2), 0.0], [-math.log(2), 0.0, 0.0]], np.float32)
    loss, count, sums = rl.grpo_terms(
        logp, logp, ref, np.array([1.0, -0.5]), mask, clip_eps=0.2, beta=0.1
    )
    k3_0 = (0.0 + (2 - math.log(2) - 1)) / 2  # mean over two actions of e^d - d - 1
    k3_1 = 0.5 + math.log(2) - 1
    assert float(sums["ref_kl_k3"]) == pytest.approx(k3_0 + k3_1, rel=1e-5)
    assert float(loss) == pytest.approx(-1.0 + 0.5 + 0.1 * (k3_0 + k3_1), rel=1e-5)
    assert float(count) == 2 and float(sums["clip_fraction"]) == 0


def test_kl_rewards_and_controller():
    mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], np.float32)
    logp = np.array([[-1.0, -1.0, -2.0, -3.0], [-1.0, -1.0, -0.5, -1.5]], np.float32)
    ref = np.array([[-9.0, -1.5, -1.0, -9.0], [-9.0, -9.0, -1.0, -1.0]], np.float32)
    rewards = rl.kl_rewards(np.array([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    want = [[0, -0.05, 0.1 + 2.0, 0], [0, 0, -0.05, 0.05 - 1.0]]
    np.testing.assert_allclose(rewards, want, rtol=1e-5, atol=1e-7)
    # Ziegler et al.: the error is clipped to +-0.2, scaled by n_steps / horizon.
    assert rl.adaptive_kl_coef(0.1, 12.0, 16, target=6.0, horizon=10000) == pytest.approx(
        0.1 * (1 + 0.2 * 16 / 10000)
    )
    assert rl.adaptive_kl_coef(0.1, 5.4, 16, target=6.0, horizon=10000) == pytest.approx(
        0.1 * (1 - 0.1 * 16 / 10000)
    )
    assert rl.adaptive_kl_coef(0.1, 50.0, 16, target=None, horizon=10000) == 0.1
    assert float(rl.kl_k3(np.float32(-1.0), np.float32(-1.0 + math.log(2)))) == pytest.approx(
        1 - math.log(2)
    )


# Short runs from the pretrained tiny decoder on prompts of the synthetic "add" task, rewarded
# for "the" ("produce token X": the share of completion words that are "the").
RL_ARGS = [
    "data.dataset=synthetic_preferences:add",
    "objective.reward=word:the",
    "objective.rollout_tokens=8",
    "objective.temperature=0.7",
    "steps=6",
    "batch_size=16",
    "seq_len=24",
    "optim.lr=2e-3",
    "optim.warmup_steps=0",
    "eval_batches=1",
    "log_every=1",
]


def rl_config(name, init_from, run_dir, *extra):
    overrides = [f"objective.name={name}", f"init_from={init_from}", f"run_dir={run_dir}"]
    return resolve_train_config(overrides=[*overrides, *RL_ARGS, *extra])


def iterations(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "reward" in r]


@pytest.fixture(scope="module")
def rl_run(pretrained_decoder, tmp_path_factory):
    """``rl_run(name) -> (run_dir, summary)``: one uninterrupted run of each objective."""
    runs = {}

    def get(name):
        if name not in runs:
            run = tmp_path_factory.mktemp(name)
            cfg = rl_config(name, pretrained_decoder, run)
            runs[name] = run, train_rl(cfg, progress=False, log=quiet)
        return runs[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_rl_raises_reward_near_reference(name, rl_run):
    # Measured: the mean reward of the rollouts rises from 0.09 to 0.34 in 6 iterations (PPO and
    # GRPO), that of held-out prompts from 0 to 0.29 (PPO) / 0.31 (GRPO); KL <= 4.2 nats.
    run, summary = rl_run(name)
    recs = iterations(run)
    rewards, kls = [r["reward"] for r in recs], [r["kl"] for r in recs]
    assert kls[0] == 0.0  # the first rollouts come from the reference itself
    assert summary["val_reward_start"] < 0.02 and summary["val_reward"] > 0.15
    assert np.mean(rewards[-2:]) > rewards[0] + 0.1
    assert max(kls) < 8.0  # nats per completion of 8 tokens (kl_coef 0.05)
    if name == "ppo":
        assert min(r["value_loss"] for r in recs) > 0 and recs[0]["clip_fraction"] > 0


def test_eval_scores_the_policy_as_the_last_validation(rl_run, capsys):
    """`llmzoo eval` samples the validation prompts as training's last evaluation did."""
    run, summary = rl_run("grpo")
    assert main(["eval", "--run", str(run)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["objective"] == "grpo" and result["step"] == summary["step"]
    assert result["reward"] == pytest.approx(summary["val_reward"], abs=1e-6)


def test_rl_resumes_exactly(rl_run, pretrained_decoder, tmp_path):
    whole, _ = rl_run("grpo")
    cfg = rl_config("grpo", pretrained_decoder, tmp_path)
    train_rl(cfg, stop_at=3, progress=False, log=quiet)
    assert [r["step"] for r in iterations(tmp_path)] == [1, 2, 3]
    train_rl(cfg, progress=False, log=quiet)
    assert read_metrics(tmp_path) == read_metrics(whole)
    (_, a, _), (_, b, _) = load_params(str(whole)), load_params(str(tmp_path))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


@pytest.mark.parametrize("config", ["configs/ppo-tiny.yaml", "configs/grpo-tiny.yaml"])
def test_rl_without_reward_is_one_line(config, tmp_path, error_line):
    run = tmp_path / "run"
    args = ["train", "--config", config, "objective.reward=''", f"run_dir={run}"]
    assert main([*args, f"init_from={tmp_path}/policy"]) == 2
    line = error_line()
    assert "needs a reward: set objective.reward" in line and "run:DIR" in line
    assert not run.exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("objective.clip_eps=1.5", "objective.clip_eps=1.5 is out of range"),
        ("objective.reward=nope", "objective.reward='nope' is unknown"),
        ("objective.group_size=3", "batch_size=16 does not split into"),
    ],
)
def test_rl_bad_settings_are_one_line(override, expected, pretrained_decoder, tmp_path, error_line):
    args = ["train", "--config", "configs/grpo-tiny.yaml", f"init_from={pretrained_decoder}"]
    assert main([*args, f"run_dir={tmp_path}/run", override]) == 2
    assert expected in error_line()


def test_reward_model_scores_its_logit(pretrained_decoder, tmp_path):
    # A reward-model run (random one-output head) scores prompt + completion as its logit at the
    # completion's last token, encoded as the reward objective trains it: [bos] prompt completion.
    cfg = read_config(pretrained_decoder)
    model = dataclasses.replace(cfg.model, head="sequence_classification", num_labels=1)
    cfg = dataclasses.replace(cfg, model=model)
    params = decoder.init(jax.random.key(1), model)
    write_run(str(tmp_path / "rm"), cfg, params, tokenizer_path(pretrained_decoder))
    pairs = [("add 1 2 =", " 3"), ("add 30 4 =", " 34 and more")]
    reward = f"objective.reward=run:{tmp_path}/rm"
    scorer = make_scorer(rl_config("ppo", pretrained_decoder, tmp_path, reward))
    scores = scorer(*zip(*pairs, strict=True))
    tok = read_tokenizer(pretrained_decoder)
    rows = [
        [tok.bos_id, *tok.encode(prompt), *tok.encode(completion)] for prompt, completion in pairs
    ]
    lengths = np.array([len(row) for row in rows])
    tokens = np.zeros((2, lengths.max()), np.int32)  # right-padded, segment 0 on padding
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    segment_ids = (np.arange(lengths.max())[None] < lengths[:, None]).astype(np.int32)
    batch = {"tokens": tokens, "segment_ids": segment_ids}
    logits = jax.jit(decoder.apply, static_argnames="cfg")(params, batch, cfg=model)["logits"]
    np.testing.assert_allclose(scores, logits[:, 0], atol=1e-5)
