"""Magnitude pruning (global, per layer) and N:M sparsity, against numpy references; fixed masks
through training and resume; one-line errors of ``llmzoo prune``."""

import dataclasses

import jax
import numpy as np
import pytest

from llmzoo import compress_run
from llmzoo.cli import main
from llmzoo.compress import prune
from llmzoo.config import PruneConfig
from llmzoo.errors import ConfigError
from llmzoo.layers.lora import matrix_layout
from llmzoo.models import registry
from llmzoo.params import flatten, init_params
from llmzoo.presets import get_model_preset, resolve_train_config
from llmzoo.run_dir import load_params, read_config, write_run
from llmzoo.train.loop import train
from llmzoo.train.metrics import read_metrics

# Llama-like (GQA, SwiGLU: w_up, w_gate, w_down) with every block matrix stacked [L, ...]
LLAMA = dataclasses.replace(get_model_preset("llama-tiny"), dtype="float32", d_ff=128)
TARGETS = ["attn/wq", "attn/wk", "attn/wv", "attn/wo", "mlp/w_up", "mlp/w_gate", "mlp/w_down"]


@pytest.fixture(scope="module")
def model():
    specs = registry.get("decoder").param_specs(LLAMA)
    return specs, init_params(jax.random.key(0), specs)


def _np(tree):
    return {p: None if x is None else np.asarray(x) for p, x in flatten(tree).items()}


def _targets(specs, params):
    paths = ["layers/" + t for t in TARGETS]
    assert sorted(prune.target_paths(specs, PruneConfig())) == sorted(paths)
    return {p: np.asarray(flatten(params)[p]) for p in paths}


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.75])
def test_global_prunes_exactly_the_smallest_weights(model, s):
    specs, params = model
    pcfg = PruneConfig(sparsity=s)
    before = _targets(specs, params)
    after = _np(prune.prune_params(params, specs, pcfg))
    everything = np.concatenate([np.abs(w).ravel() for w in before.values()])
    k = round(s * everything.size)
    threshold = np.sort(everything)[k - 1] if k else -1.0  # the k-th smallest |w|
    zeros = 0
    for path, w in before.items():
        pruned = after[path] == 0
        np.testing.assert_array_equal(pruned, np.abs(w) <= threshold)  # no ties in a random init
        np.testing.assert_array_equal(after[path][~pruned], w[~pruned])
        zeros += pruned.sum()
    assert zeros == k
    assert prune.sparsity(after, specs, pcfg) == k / everything.size
    assert abs(k / everything.size - s) < 1e-4
    for path in ("embed/table", "lm_head/w", "layers/attn_norm/scale"):  # not targets
        np.testing.assert_array_equal(after[path], np.asarray(flatten(params)[path]))


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.75])
def test_layer_scope_prunes_each_layer_slice_on_its_own(model, s):
    specs, params = model
    after = _np(prune.prune_params(params, specs, PruneConfig(sparsity=s, scope="layer")))
    for path, w in _targets(specs, params).items():
        for layer in range(LLAMA.n_layers):
            a, got = np.abs(w[layer]).ravel(), after[path][layer].ravel()
            k = round(s * a.size)
            np.testing.assert_array_equal(np.flatnonzero(got == 0), np.sort(np.argsort(a)[:k]))


@pytest.mark.parametrize("nm", ["2:4", "1:4", "3:8"])
def test_nm_keeps_the_n_largest_of_every_m_inputs(model, nm):
    specs, params = model
    n, m = PruneConfig(nm=nm).n_m
    after = _np(prune.prune_params(params, specs, PruneConfig(nm=nm)))
    for path, w in _targets(specs, params).items():
        stack, n_in = matrix_layout(flatten(specs)[path])
        assert stack == 1 and n_in == (2 if path.endswith("wo") else 1)  # wo [L, N, H, D]
        fan_in = int(np.prod(w.shape[1 : 1 + n_in]))
        # [L, groups, M, fan_out]: the inputs flattened (wo: N*H), M consecutive of each column
        groups = np.abs(w).reshape(LLAMA.n_layers, fan_in // m, m, -1)
        top = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
        want = np.zeros(groups.shape, bool)
        np.put_along_axis(want, top, True, axis=2)
        np.testing.assert_array_equal(after[path] != 0, want.reshape(w.shape))
        assert (want.sum(axis=2) == n).all()
    assert prune.sparsity(after, specs, PruneConfig(nm=nm)) == 1 - n / m


@pytest.mark.parametrize(
    "pcfg",
    [PruneConfig(sparsity=0.6), PruneConfig(sparsity=0.3, scope="layer"), PruneConfig(nm="2:4")],
)
def test_pruning_a_pruned_tree_again_changes_nothing(model, pcfg):
    specs, params = model
    once = prune.prune_params(params, specs, pcfg)
    twice = prune.prune_params(once, specs, pcfg)
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m1, m2 = _np(prune.masks(params, specs, pcfg)), _np(prune.masks(once, specs, pcfg))
    assert [p for p, m in m1.items() if m is not None] == ["layers/" + t for t in sorted(TARGETS)]
    for path, m in m1.items():
        assert (m is None and m2[path] is None) or np.array_equal(m, m2[path])


def test_nm_that_does_not_tile_the_inputs_is_an_error(model):
    specs, params = model  # every matrix has 64 or 128 inputs (wo: 4 heads * 16)
    with pytest.raises(ConfigError, match=r"prune.nm='2:3': layers/attn/w\w+ has 64 inputs"):
        prune.prune_params(params, specs, PruneConfig(nm="2:3"))
    with pytest.raises(ConfigError, match="match no weight matrix"):
        prune.masks(params, specs, PruneConfig(sparsity=0.5, targets=("attn/wz",)))


# --- fixed masks through training and resume -------------------------------------------------


def _train(tiny_run_args, run_dir, *extra, stop_at=None):
    args = [*tiny_run_args, f"run_dir={run_dir}", "eval_every=4", "ckpt_every=4", *extra]
    cfg = resolve_train_config(overrides=args)
    return train(cfg, stop_at=stop_at, progress=False, log=lambda *a, **k: None, extras=False)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_run_args):
    """``base``: a fresh tiny GPT-2 written as a run; ``pruned``: it at 50% global sparsity."""
    root = tmp_path_factory.mktemp("prune")
    cfg = resolve_train_config(overrides=[*tiny_run_args, f"run_dir={root / 'base'}"])
    params = init_params(jax.random.key(1), registry.get("decoder").param_specs(cfg.model))
    write_run(str(root / "base"), cfg, params)
    compress_run.prune_run(str(root / "base"), str(root / "pruned"), sparsity=0.5)
    return root


@pytest.mark.slow  # three short training runs
def test_pruned_weights_stay_zero_through_training_and_resume(pruned_run, tiny_run_args):
    root = pruned_run
    pcfg = read_config(str(root / "pruned")).prune
    assert pcfg == PruneConfig(sparsity=0.5)
    assert compress_run.measured_sparsity(str(root / "pruned")) == pytest.approx(0.5, abs=1e-5)
    ft = [f"init_from={root / 'pruned'}", "steps=8", "optim.weight_decay=0.5"]
    _train(tiny_run_args, root / "whole", *ft)
    _train(tiny_run_args, root / "cut", *ft, stop_at=4)
    _train(tiny_run_args, root / "cut", *ft)  # resumes from step 4: the masks come back too

    assert read_config(str(root / "whole")).prune == pcfg  # inherited from init_from
    _, start, _ = load_params(str(root / "pruned"))
    _, whole, step = load_params(str(root / "whole"))
    _, cut, _ = load_params(str(root / "cut"))
    assert step == 8
    start, whole, cut = _np(start), _np(whole), _np(cut)
    model_cfg = read_config(str(root / "whole")).model
    paths = prune.target_paths(registry.get("decoder").param_specs(model_cfg), pcfg)
    assert len(paths) == 6  # wq wk wv wo w_up w_down
    for path in paths:
        zero = start[path] == 0
        assert zero.mean() > 0.2
        np.testing.assert_array_equal(whole[path] == 0, zero)  # exactly the pruned ones
        assert not np.array_equal(whole[path], start[path])  # the kept weights did train
    for path in whole:
        np.testing.assert_array_equal(whole[path], cut[path])  # resume is bit-exact
    strip = lambda recs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]  # noqa: E731
    assert strip(read_metrics(str(root / "cut"))) == strip(read_metrics(str(root / "whole")))


def test_prune_with_lora_is_a_one_line_error(tiny_run_args, tmp_path, error_line):
    args = [*tiny_run_args, f"run_dir={tmp_path / 'run'}", "lora.rank=2", "prune.sparsity=0.5"]
    assert main(["train", "--no-progress", *args]) == 2
    line = error_line()
    assert "prune keeps pruned weights at zero in full-parameter training, not with lora" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sparsity", "1.0"], "prune.sparsity=1.0 is out of range; use a value in [0.0, 1.0)"),
        (["--sparsity", "-0.1"], "prune.sparsity=-0.1 is out of range"),
        (
            ["--nm", "4:4"],
            "prune.nm='4:4': N:M sparsity keeps N of every M weights and needs 0 < N",
        ),
        (["--nm", "5:4"], "prune.nm='5:4'"),
        (["--nm", "2-4"], "prune.nm='2-4'"),
        (["--sparsity", "0.5", "--nm", "2:4"], "give one of --sparsity S"),
        ([], "give one of --sparsity S"),
        (["--sparsity", "0.5", "--scope", "block"], "prune.scope='block' is unknown"),
        (["--nm", "2:4", "--scope", "layer"], "--scope applies to --sparsity"),
        (["--nm", "2:3"], "prune.nm='2:3': layers/attn/wk has 32 inputs per output, not a multi"),
    ],
)
def test_bad_prune_flags_are_one_line_errors(pruned_run, tmp_path, error_line, flags, message):
    out = tmp_path / "out"
    assert main(["prune", "--run", str(pruned_run / "base"), *flags, "--out", str(out)]) == 2
    assert message in error_line()
    assert not out.exists()
