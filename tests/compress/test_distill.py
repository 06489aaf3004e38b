"""Knowledge distillation: the loss against the formula in NumPy, a distilled student against the
same student trained from scratch on an equal token budget, and one-line errors for bad teachers."""

import dataclasses
import re

import jax
import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.eval import evaluate_run
from llmzoo.models import registry
from llmzoo.objectives import distill
from llmzoo.objectives.losses import token_loss
from llmzoo.params import is_spec
from llmzoo.presets import get_model_preset, resolve_train_config
from llmzoo.train.loop import train

V = 97  # vocabulary of the loss tests


def _model(preset, seed, **fields):
    """A model config and random params (drawn in NumPy: no init to compile)."""
    cfg = dataclasses.replace(get_model_preset(preset), vocab_size=V, **fields)
    rng = np.random.default_rng(seed)
    draw = lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32)  # noqa: E731
    return cfg, jax.tree.map(draw, registry.get(cfg.kind).param_specs(cfg), is_leaf=is_spec)


def _batch(seed=0, b=3, t=12):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (b, t + 1)).astype(np.int32)
    mask = (rng.random((b, t)) < 0.8).astype(np.float32)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _reference(s, t, batch, tau, alpha, hidden=None, hidden_weight=0.0):
    """(1 - a) CE + a tau^2 KL(p_t || p_s) [+ w mean (h_s - h_t)^2], summed over counted tokens."""
    targets, mask = batch["targets"], batch["loss_mask"]
    nll = -np.take_along_axis(_log_softmax(s), targets[..., None], -1)[..., 0]
    logp_t, logp_s = _log_softmax(np.asarray(t) / tau), _log_softmax(np.asarray(s) / tau)
    kl = (np.exp(logp_t) * (logp_t - logp_s)).sum(-1)
    per = (1 - alpha) * nll + alpha * tau**2 * kl
    if hidden is not None:
        per = per + hidden_weight * ((hidden[0] - hidden[1]) ** 2).mean(-1)
    return (per * mask).sum(), (nll * mask).sum(), (kl * mask).sum()


def _outputs(s_cfg, s_params, teacher, batch):
    """distill_loss, the student's and the teacher's outputs and the causal LM loss, from one
    compiled call (eagerly, every op of a model compiles on its own)."""

    def run(s_params, teacher, batch):
        loss = distill.distill_loss(s_params, batch, None, cfg=s_cfg, frozen=teacher)
        s_out = registry.get(s_cfg.kind).apply(s_params, batch, cfg=s_cfg)
        t_out = registry.get(teacher.cfg.kind).apply(teacher.params, batch, cfg=teacher.cfg)
        return loss, s_out, t_out, token_loss(s_params, batch, None, cfg=s_cfg)[0]

    loss, s_out, t_out, plain = jax.jit(run)(s_params, teacher, batch)
    as_np = lambda out: {k: np.asarray(v, np.float64) for k, v in out.items()}  # noqa: E731
    return loss, as_np(s_out), as_np(t_out), float(plain)


@pytest.mark.parametrize(
    "student, teacher, tau, alpha, hidden_weight",
    [
        ("llama-tiny", "gpt2-tiny", 2.0, 0.3, 0.0),  # another kind and width
        ("lstm-tiny", "gpt2-tiny", 0.5, 1.0, 0.0),  # all soft: tau^2 KL
        ("lstm-tiny", "gpt2-tiny", 3.0, 0.0, 0.0),  # all hard: the causal LM loss
        ("llama-tiny", "llama-tiny", 1.5, 0.4, 0.7),  # hidden states of one width
        ("llama-tiny", "itself", 3.0, 1.0, 0.0),  # a teacher equal to the student
        ("mamba-tiny", "rwkv-tiny", 2.0, 0.5, 0.0),  # the other causal LM kinds
    ],
)
def test_loss_matches_the_formula(student, teacher, tau, alpha, hidden_weight):
    s_cfg, s_params = _model(student, 1, d_model=16, n_layers=1)
    if teacher == "itself":
        t_cfg, t_params = s_cfg, s_params
    else:
        t_cfg, t_params = _model(teacher, 2, d_model=16 if hidden_weight else 32, n_layers=2)
    batch = _batch()
    frozen = distill.Teacher(
        t_params, cfg=t_cfg, temperature=tau, kd_weight=alpha, hidden_weight=hidden_weight
    )
    (loss, count, metrics), s, t, plain = _outputs(s_cfg, s_params, frozen, batch)
    hidden = (s["final_hidden"], t["final_hidden"]) if hidden_weight else None
    ref_loss, ref_nll, ref_kl = _reference(
        s["logits"], t["logits"], batch, tau, alpha, hidden, hidden_weight
    )
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(float(metrics["nll"]), ref_nll, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["kl"]), ref_kl, rtol=2e-5, atol=1e-5)
    assert float(count) == batch["loss_mask"].sum()
    assert float(metrics["nll"]) == pytest.approx(plain, rel=1e-6)
    if teacher == "itself":  # nothing left to learn from it
        assert abs(float(loss)) < 1e-4 and abs(ref_kl) < 1e-9
    else:
        assert ref_kl > 0.5  # spread logits: the soft term is not negligible
    if alpha == 1.0:  # all soft: tau^2 times the KL, which a tau-free loss would not give
        np.testing.assert_allclose(float(loss), tau**2 * ref_kl, rtol=2e-5, atol=1e-5)
    if alpha == 0.0:
        assert float(loss) == pytest.approx(plain, rel=1e-6)
    if hidden_weight:
        mse = (((hidden[0] - hidden[1]) ** 2).mean(-1) * batch["loss_mask"]).sum()
        np.testing.assert_allclose(float(metrics["hidden_mse"]), mse, rtol=2e-5)
        assert hidden_weight * mse > 0.1 * ref_loss  # the hidden term counts


# A student of a quarter of the teacher's (pretrained_decoder: d_model 64, 2 layers) block params.
STUDENT = ["model.preset=llama-tiny", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
           "model.n_kv_heads=1", "model.d_ff=64", "model.max_seq_len=128"]  # fmt: skip
STEPS = 30  # the teacher is far ahead of the student this early (later, less: it is weak)


def _student_args(data_dir, run_dir, *extra):
    return [
        f"data.data_dir={data_dir}",
        f"data.tokenizer={data_dir}/sp512.model",
        "data.vocab_size=512",
        "model.vocab_size=512",
        *STUDENT,
        f"run_dir={run_dir}",
        f"steps={STEPS}",
        "seq_len=32",
        "batch_size=16",
        "eval_batches=4",
        f"eval_every={STEPS}",
        "log_every=20",
        "optim.lr=3e-3",
        "optim.warmup_steps=10",
        *extra,
    ]


def _train(args):
    cfg = resolve_train_config(overrides=args)
    return train(cfg, progress=False, log=lambda *a, **k: None, extras=False)


@pytest.mark.slow
def test_distilled_student_beats_one_trained_from_scratch(
    pretrained_decoder, finetune_data_dir, tmp_path
):
    scratch = _train(_student_args(finetune_data_dir, tmp_path / "scratch"))
    kd = ["objective.name=distill", f"teacher={pretrained_decoder}", "objective.kd_weight=0.9",
          "objective.kd_temperature=1"]  # fmt: skip
    distilled = _train(_student_args(finetune_data_dir, tmp_path / "distilled", *kd))
    # the same next-token loss on the same validation batches: eval scores both as causal LM
    scratch_eval = evaluate_run(str(tmp_path / "scratch"))
    distilled_eval = evaluate_run(str(tmp_path / "distilled"))
    print(f"validation next-token loss after {STEPS} steps: from scratch "
          f"{scratch_eval['loss']:.4f}, distilled {distilled_eval['loss']:.4f}")  # fmt: skip
    assert distilled_eval["objective"] == "distill"
    assert distilled_eval["tokens"] == scratch_eval["tokens"]
    # the training loop's val_nll is that same number; its val_loss is the mixed loss
    assert distilled["val_nll"] == pytest.approx(distilled_eval["loss"], rel=1e-4)
    assert scratch["val_loss"] == pytest.approx(scratch_eval["loss"], rel=1e-4)
    assert distilled_eval["loss"] < scratch_eval["loss"] - 0.03  # 5.23 against 5.32


def test_distill_run_resumes_with_its_teacher(pretrained_decoder, finetune_data_dir, tmp_path):
    kd = ["objective.name=distill", f"teacher={pretrained_decoder}", "steps=4", "eval_every=4",
          "optim.warmup_steps=2"]  # fmt: skip
    args = _student_args(finetune_data_dir, tmp_path / "run", *kd, "ckpt_every=2")
    cfg = resolve_train_config(overrides=args)
    train(cfg, stop_at=2, progress=False, log=lambda *a, **k: None, extras=False)
    resumed = train(cfg, progress=False, log=lambda *a, **k: None, extras=False)
    whole = _train(_student_args(finetune_data_dir, tmp_path / "whole", *kd))
    assert resumed["step"] == 4
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (["model.vocab_size=600"], r"vocab_size=512 but the student has model.vocab_size=600"),
        (["teacher=null"], r"objective.name='distill' learns from a teacher run; set teacher=RUN"),
        (["teacher={tmp}/nowhere"], r"teacher='.*/nowhere' does not exist"),
        (["objective.hidden_weight=1"], r"model.d_model=32 to equal .* 64; set model.d_model=64"),
        (["objective.name=causal_lm"], r"is read by objective.name=distill only, not 'causal_lm'"),
        (["lora.rank=4"], r"trains all the student's params; drop lora"),
    ],
)
def test_bad_teachers_are_one_line_errors(
    pretrained_decoder, finetune_data_dir, tmp_path, error_line, change, message
):
    kd = ["objective.name=distill", f"teacher={pretrained_decoder}"]
    change = [c.format(tmp=tmp_path) for c in change]
    args = _student_args(finetune_data_dir, tmp_path / "run", *kd, *change)
    assert main(["train", *args]) == 2
    assert re.search(message, error_line())
    assert not (tmp_path / "run").exists()
