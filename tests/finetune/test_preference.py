"""Preference learning: records, examples, the Bradley-Terry and DPO/IPO/SimPO losses against
hand-computed values and TRL's formulas (in NumPy), and short reward/DPO runs on held-out pairs."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.data import preferences
from llmzoo.errors import DataError
from llmzoo.models import decoder, encoder
from llmzoo.objectives import preference
from llmzoo.presets import resolve_train_config
from llmzoo.train.loop import train


def test_synthetic_tasks_are_disjoint_deterministic_and_rewarded():
    train_set = preferences.load_preferences("synthetic_preferences", "train")
    val_set = preferences.load_preferences("synthetic_preferences:sort,add", "validation")
    assert (len(train_set), len(val_set)) == (3000, 300)
    assert not {r["prompt"] for r in train_set} & {r["prompt"] for r in val_set}
    assert {preferences.task_of(r["prompt"]) for r in val_set} == {"sort", "add"}
    again = preferences.synthetic_preferences("train", size=5, seed=1)
    assert again == preferences.synthetic_preferences.__wrapped__("train", size=5, seed=1)
    for r in (*train_set, *val_set):
        assert preferences.reward(r["prompt"], r["chosen"]) > preferences.reward(
            r["prompt"], r["rejected"]
        )
    # the reward functions themselves, by hand
    assert preferences.REWARD_FNS["sort"]("sort: 5 2 9 ->", " 2 9 5") == pytest.approx(1 / 3)
    assert preferences.REWARD_FNS["sort"]("sort: 5 2 9 ->", " 2 5 9 9") == 0.75
    assert preferences.REWARD_FNS["add"]("add 12 30 =", " 45") == 0.25
    assert preferences.REWARD_FNS["end"]("end with fox: cat owl", " bee fox") == 1.0
    assert preferences.REWARD_FNS["end"]("end with fox: cat owl", " fox bee") == 0.0


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "record 1 of .* identical"),
        ({"prompt": "p", "chosen": "a"}, "record 1 of .* no string 'rejected'"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, record, message):
    path = tmp_path / "prefs.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message):
        preferences.load_preferences(str(path), "train")


class CharTokenizer:
    """One id per character (its code point), bos 2, eos 3."""

    bos_id, eos_id = 2, 3

    def encode(self, text):
        return [ord(c) for c in text]


def _examples(row_len):
    cfg = type("Cfg", (), {"seq_len": row_len})
    return preference.PreferenceExamples(cfg, CharTokenizer())


def test_examples_shift_pad_and_mask_the_response():
    a, b, c, d, e = map(ord, "abcde")
    ex = _examples(6)({"prompt": "ab", "chosen": "cd", "rejected": "e"})
    np.testing.assert_array_equal(ex["chosen_tokens"], [2, a, b, c, d, 0])
    np.testing.assert_array_equal(ex["chosen_targets"], [a, b, c, d, 3, 0])
    np.testing.assert_array_equal(ex["chosen_segment_ids"], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(ex["chosen_loss_mask"], [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(ex["rejected_tokens"], [2, a, b, e, 0, 0])
    np.testing.assert_array_equal(ex["rejected_targets"], [a, b, e, 3, 0, 0])
    np.testing.assert_array_equal(ex["rejected_loss_mask"], [0, 0, 1, 1, 0, 0])
    assert ex["example_mask"] == 1.0


def test_examples_cut_the_prompt_left_and_the_response_right():
    f, w, x, y, z = map(ord, "fwxyz")
    # row_len 4: 5 tokens a side; the prompt keeps max(5 - 4, 5 // 2) = 2 tokens: bos and "f"
    ex = _examples(4)({"prompt": "abcdef", "chosen": "xyz", "rejected": "w"})
    np.testing.assert_array_equal(ex["chosen_tokens"], [2, f, x, y])
    np.testing.assert_array_equal(ex["chosen_targets"], [f, x, y, z])  # eos cut
    np.testing.assert_array_equal(ex["chosen_loss_mask"], [0, 1, 1, 1])
    np.testing.assert_array_equal(ex["rejected_tokens"], [2, f, w, 0])
    np.testing.assert_array_equal(ex["rejected_targets"], [f, w, 3, 0])
    np.testing.assert_array_equal(ex["rejected_segment_ids"], [1, 1, 1, 0])


def test_bradley_terry_hand_computed():
    loss, count, m = preference.bradley_terry(
        jnp.array([2.0, 0.5, -1.0]), jnp.array([1.0, 1.5, 7.0]), jnp.array([1.0, 1.0, 0.0])
    )
    # -log sigmoid(1) - log sigmoid(-1) = log(1 + e^-1) + log(1 + e)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1)) + math.log1p(math.e), rel=1e-6)
    assert (float(count), float(m["accuracy"]), float(m["margin"])) == (2.0, 1.0, 0.0)


def test_preference_losses_hand_computed():
    policy, ref = jnp.array([[-1.0], [-3.0]]), jnp.array([[-2.0], [-2.0]])
    lengths = jnp.array([[2.0], [4.0]])
    kw = dict(beta=0.5, gamma=0.25)
    # sigmoid: 0.5 * ((-1 + 2) - (-3 + 2)) = 1
    loss, rewards = preference.preference_losses(policy, ref, lengths, loss_type="sigmoid", **kw)
    assert float(loss[0]) == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    np.testing.assert_allclose(rewards[:, 0], [0.5, -0.5])
    # ipo, per-token log-ratios 1/2 and -1/4: (0.75 - 1 / (2 * 0.5))^2
    loss, rewards = preference.preference_losses(policy, ref, lengths, loss_type="ipo", **kw)
    assert float(loss[0]) == pytest.approx(0.0625, rel=1e-6)
    np.testing.assert_allclose(rewards[:, 0], [0.25, -0.125])
    # simpo: 0.5 * -1/2 - 0.5 * -3/4 - 0.25 = -0.125
    loss, rewards = preference.preference_losses(policy, None, lengths, loss_type="simpo", **kw)
    assert float(loss[0]) == pytest.approx(math.log1p(math.exp(0.125)), rel=1e-6)


def _pairs(rng, b, t, vocab):
    """A batch of ``b`` random pairs (the last one padding), responses after 3 prompt tokens."""
    batch = {"example_mask": np.array([1.0] * (b - 1) + [0.0], np.float32)}
    for side in preference.SIDES:
        n = rng.integers(5, t + 1, size=b)
        real = np.arange(t)[None] < n[:, None]
        batch[f"{side}_tokens"] = rng.integers(4, vocab, (b, t)) * real
        batch[f"{side}_targets"] = rng.integers(4, vocab, (b, t)) * real
        batch[f"{side}_segment_ids"] = real.astype(np.int32)
        batch[f"{side}_loss_mask"] = (real & (np.arange(t)[None] >= 2)).astype(np.float32)
    for key, value in batch.items():
        if key != "example_mask":
            value[-1] = 0
    return batch


@functools.cache
def _apply(module, cfg):
    return jax.jit(functools.partial(module.apply, cfg=cfg))


def _seq_logps(cfg, params, batch, side):
    """TRL's ``get_batch_logps`` in NumPy, from a forward over this side's rows alone."""
    inputs = {k: batch[f"{side}_{k}"] for k in ("tokens", "segment_ids")}
    logits = np.asarray(_apply(decoder, cfg)(params, inputs)["logits"], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    taken = np.take_along_axis(logp, batch[f"{side}_targets"][..., None], -1)[..., 0]
    mask = batch[f"{side}_loss_mask"]
    return (taken * mask).sum(-1), mask.sum(-1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo"])
def test_dpo_loss_matches_trl_formulas(loss_type):
    cfg = decoder.DecoderConfig(
        vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16, dtype="float32"
    )
    params, ref = decoder.init(jax.random.key(0), cfg), decoder.init(jax.random.key(1), cfg)
    batch = _pairs(np.random.default_rng(0), 4, 8, 40)
    np.seterr(divide="ignore", invalid="ignore")  # NumPy on the padding row's zero length
    beta, gamma = 0.3, 0.4
    frozen = preference.Reference(
        None if loss_type == "simpo" else ref, beta=beta, loss_type=loss_type, gamma=gamma
    )
    loss_fn = jax.jit(functools.partial(preference.dpo_loss, cfg=cfg, rng=None))
    loss, count, m = loss_fn(params, batch, frozen=frozen)
    (pc, lc), (pr, lr) = (_seq_logps(cfg, params, batch, s) for s in preference.SIDES)
    (rc, _), (rr, _) = (_seq_logps(cfg, ref, batch, s) for s in preference.SIDES)
    if loss_type == "sigmoid":  # TRL DPOTrainer.dpo_loss
        logits = (pc - pr) - (rc - rr)
        losses, chosen, rejected = (
            np.logaddexp(0, -beta * logits),
            beta * (pc - rc),
            beta * (pr - rr),
        )
    elif loss_type == "ipo":  # TRL: average log-probs for ipo
        logits = (pc / lc - pr / lr) - (rc / lc - rr / lr)
        losses = (logits - 1 / (2 * beta)) ** 2
        chosen, rejected = beta * (pc - rc) / lc, beta * (pr - rr) / lr
    else:  # TRL CPOTrainer, loss_type="simpo": gamma_beta_ratio = gamma / beta
        logits = (pc / lc - pr / lr) - gamma / beta
        losses, chosen, rejected = np.logaddexp(0, -beta * logits), beta * pc / lc, beta * pr / lr
    mask = batch["example_mask"]  # the padding row (no response tokens) is skipped
    losses, chosen, rejected = (np.where(mask > 0, x, 0.0) for x in (losses, chosen, rejected))
    assert float(count) == 3.0
    assert float(loss) == pytest.approx((losses * mask).sum(), rel=1e-4)
    assert float(m["chosen_reward"]) == pytest.approx((chosen * mask).sum(), rel=1e-4, abs=1e-5)
    assert float(m["rejected_reward"]) == pytest.approx((rejected * mask).sum(), rel=1e-4)
    assert float(m["accuracy"]) == ((chosen > rejected) * mask).sum()
    assert (float(m["kl"]) > 0) == (loss_type != "simpo")


def test_reward_loss_scores_each_side_like_separate_forwards():
    """One forward over [2B, T] equals two; an encoder scores its first ([CLS]) token."""
    cfg = encoder.EncoderConfig(
        vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16,
        head="sequence_classification", num_labels=1, pooler=True, dtype="float32",
    )  # fmt: skip
    params = encoder.init(jax.random.key(0), cfg)
    batch = _pairs(np.random.default_rng(1), 4, 8, 40)
    loss, count, m = jax.jit(functools.partial(preference.reward_loss, cfg=cfg))(
        params, batch, None
    )
    sides = [{k: batch[f"{s}_{k}"] for k in ("tokens", "segment_ids")} for s in preference.SIDES]
    scores = [np.asarray(_apply(encoder, cfg)(params, side)["logits"][:, 0]) for side in sides]
    margin, mask = scores[0] - scores[1], batch["example_mask"]
    assert float(loss) == pytest.approx((np.logaddexp(0, -margin) * mask).sum(), rel=1e-5)
    assert float(m["accuracy"]) == ((margin > 0) * mask).sum() and float(count) == 3.0


def _finetune(pretrained, tmp_path, name, steps, lr, extra=()):
    args = [
        f"init_from={pretrained}", f"run_dir={tmp_path / name}", f"objective.name={name}",
        "data.dataset=synthetic_preferences:sort", f"steps={steps}", f"optim.lr={lr}",
        "optim.warmup_steps=5", "seq_len=32", "batch_size=16", "eval_batches=4",
        f"eval_every={steps}", f"log_every={steps}", *extra,
    ]  # fmt: skip
    return train(resolve_train_config(overrides=args), progress=False, log=lambda *a, **k: None)


@pytest.mark.slow
def test_reward_model_ranks_held_out_pairs(pretrained_decoder, tmp_path):
    """40 steps of Bradley-Terry on sorting pairs: held-out (64 pairs) accuracy >= 0.75 (0.89
    measured, margin 3.5; 0.5 is chance)."""
    out = _finetune(pretrained_decoder, tmp_path, "reward", steps=40, lr=3e-3)
    assert out["val_accuracy"] >= 0.75 and out["val_margin"] > 0.5


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy(pretrained_decoder, tmp_path):
    """At step 0 the policy is its reference: every implicit reward is 0 (accuracy 0, a tie).
    30 steps of DPO make it prefer the sorted answers of held-out prompts (measured: accuracy
    0.91, margin 0.84, chosen reward -0.44, rejected -1.29, KL 7.2 nats a response)."""
    out = _finetune(pretrained_decoder, tmp_path, "dpo", steps=30, lr=1e-3)
    assert out["val_accuracy"] >= 0.8 and out["val_margin"] > 0.2
    assert out["val_chosen_reward"] > out["val_rejected_reward"] and out["val_kl"] > 0


@pytest.mark.parametrize("objective", ["reward", "dpo"])
def test_identical_pair_is_one_line_error(objective, tmp_path, error_line):
    """The objective's config check reads the data first: no model, tokenizer or run dir."""
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "add 1 2 =", "chosen": " 3", "rejected": " 3"}) + "\n")
    args = [f"run_dir={tmp_path / 'run'}", f"objective.name={objective}", f"data.dataset={path}"]
    assert main(["train", *args, "data.eval_fraction=0.5"]) == 2
    assert not (tmp_path / "run").exists()
    line = error_line()
    assert "preference record 0 of" in line and "identical chosen and rejected" in line


def test_encoder_reward_model_trains_and_evaluates(pretrained_encoder, tmp_path, capsys):
    """An encoder scores pairs by its pooled first token; a short run trains and `llmzoo eval`
    reproduces its validation accuracy."""
    out = _finetune(pretrained_encoder, tmp_path, "reward", steps=5, lr=1e-3)
    assert out["step"] == 5 and 0.0 <= out["val_accuracy"] <= 1.0
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "reward")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(out["val_accuracy"], abs=1e-6)
