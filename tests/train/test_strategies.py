"""Named sharding strategies on 8 forced CPU devices: each trains like one device, lays params out
as the rules table says, never makes XLA replicate an activation, and rejects bad layouts early."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from llmzoo import sharding
from llmzoo.compress import prune
from llmzoo.config import OptimConfig
from llmzoo.config_tune import PruneConfig
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.objectives.losses import token_loss
from llmzoo.presets import get_model_preset, resolve_train_config
from llmzoo.train.optimizer import init_state, keep_zeros, make_optimizer
from llmzoo.train.setup import layout, replicate_scalars
from llmzoo.train.step import TrainState, make_steps

REMAT = "Involuntary full rematerialization"
# N=8 heads split 8 ways under tp; K=2 KV heads are replicated (GQA: harmless).
LLAMA = dataclasses.replace(get_model_preset("llama-tiny"), n_heads=8, d_model=64)
BERT = dataclasses.replace(get_model_preset("bert-tiny"), n_heads=8)
BART = get_model_preset("bart-tiny")


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip(f"needs 8 devices (conftest forces 8 CPU devices), got {jax.device_count()}")


def make_batch(cfg, seed, b=8, t=16):
    """A batch of random ids for any kind: ``[B, T]`` inputs, targets and a loss mask."""
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(4, cfg.vocab_size, (b, t)).astype(np.int32)  # noqa: E731
    batch = {"targets": ids(), "loss_mask": np.ones((b, t), np.float32)}
    if cfg.kind == "seq2seq":
        return batch | {"inputs": ids(), "input_mask": np.ones((b, t), np.int32),
                        "decoder_inputs": ids()}  # fmt: skip
    return batch | {"tokens": ids()}


def train(cfg, layout=None, steps=3):
    """Losses of ``steps`` train steps and the final state, on one device or ``(mesh, rules)``."""
    specs = registry.get(cfg.kind).param_specs(cfg)
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10, specs)
    mesh, rules = layout or (None, None)
    shardings = None if mesh is None else sharding.param_shardings(specs, mesh, rules)
    params = registry.get(cfg.kind).init(jax.random.key(0), cfg, shardings)
    opt_state = tx.init(params) if mesh is None else init_state(tx, params, mesh)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
    if mesh is None:
        train_fn, _ = make_steps(token_loss, cfg, tx, 1)
    else:  # as the loop jits it: the state keeps its shardings
        state = replicate_scalars(state, mesh)
        shardings = jax.tree.map(lambda x: x.sharding, state)
        batch_sharding = sharding.batch_sharding(mesh, rules=rules)
        train_fn, _ = make_steps(token_loss, cfg, tx, 1, shardings, batch_sharding)
    losses = []
    for i in range(steps):
        batch = make_batch(cfg, i)
        if mesh is None:
            state, m = train_fn(state, batch, jax.random.key(0))
        else:
            with sharding.use_mesh(mesh, rules):
                put = jax.device_put(batch, sharding.batch_sharding(mesh, rules=rules))
                state, m = train_fn(state, put, jax.random.key(0))
        losses.append(float(m["loss"]))
    return losses, state


_REFERENCE: dict = {}


def reference(cfg):
    if cfg not in _REFERENCE:
        _REFERENCE[cfg] = train(cfg)
    return _REFERENCE[cfg]


def layout_for(cfg, *overrides):
    """``(mesh, rules)`` as the training loop builds them from ``key=value`` overrides."""
    mesh, rules, _ = layout(resolve_train_config(None, list(overrides), base=_base(cfg)))
    return mesh, rules


def _base(cfg):
    from llmzoo.presets import train_config_for

    return dataclasses.replace(train_config_for(cfg), seq_len=16)


# Expected specs, written out from the rules table (embed->fsdp; heads, mlp, vocab->tensor):
# wq [L, D, N, H], wk [L, D, K, H], w_down [L, F, D], embed table [V, D].
EXPECTED = {
    "dp": ((8, 1, 1), P(), P(), P(), P()),
    "fsdp": ((1, 8, 1), P(None, "fsdp"), P(None, "fsdp"), P(None, None, "fsdp"), P(None, "fsdp")),
    "tp": ((1, 1, 8), P(None, None, "tensor"), P(), P(None, "tensor"), P("tensor")),
    "fsdp+tp": (
        (1, 4, 2),
        P(None, "fsdp", "tensor"),
        P(None, "fsdp", "tensor"),
        P(None, "tensor", "fsdp"),
        P("tensor", "fsdp"),
    ),
}


def _same_spec(got, want):
    """Specs equal up to trailing Nones (``P('a')`` == ``P('a', None)``)."""
    strip = lambda s: tuple(s) + (None,) * (4 - len(s))  # noqa: E731
    return strip(got) == strip(want)


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_strategy_trains_like_one_device(strategy, capfd):
    extra = ["mesh_tensor=2"] if strategy == "fsdp+tp" else []
    mesh, rules = layout_for(LLAMA, f"strategy={strategy}", *extra)
    shape, wq, wk, w_down, table = EXPECTED[strategy]
    assert tuple(mesh.shape.values()) == shape
    ref, _ = reference(LLAMA)
    got, state = train(LLAMA, (mesh, rules))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    p = state.params
    assert _same_spec(p["layers"]["attn"]["wq"].sharding.spec, wq)
    assert _same_spec(p["layers"]["attn"]["wk"].sharding.spec, wk)
    assert _same_spec(p["layers"]["mlp"]["w_down"].sharding.spec, w_down)
    assert _same_spec(p["embed"]["table"].sharding.spec, table)
    # Adam's moments live where their params do.
    adam = state.opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        assert all(jax.tree.leaves(jax.tree.map(lambda a, m: a.sharding == m.sharding, p, moments)))
    assert REMAT not in capfd.readouterr().err


def test_optimizer_state_starts_where_its_params_live():
    """``init_state`` equals eager ``tx.init`` (AdamW and keep_zeros' masks) in values, with each
    moment and mask in its param's sharding and the counts replicated."""
    mesh, rules = layout_for(LLAMA, "strategy=fsdp+tp", "mesh_tensor=2")
    specs = registry.get(LLAMA.kind).param_specs(LLAMA)
    params = registry.get(LLAMA.kind).init(
        jax.random.key(0), LLAMA, sharding.param_shardings(specs, mesh, rules)
    )
    pcfg = PruneConfig(sparsity=0.5)
    tx = optax.chain(
        make_optimizer(OptimConfig(), 10, specs), keep_zeros(lambda p: prune.masks(p, specs, pcfg))
    )
    got, want = init_state(tx, params, mesh), tx.init(params)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    adam, masks = got[0][1][0], got[1].keep
    where = {path: x.sharding for path, x in jax.tree_util.tree_leaves_with_path(params)}
    for tree in (adam.mu, adam.nu, masks):  # masks: the pruned matrices' (MaskedNode: no leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            assert leaf.sharding == where[path], path
    assert masks["layers"]["attn"]["wq"].sharding.spec != P()  # a sharded mask, not replicated
    for count in (adam.count, got[0][1][2].count):
        assert count.sharding == jax.sharding.NamedSharding(mesh, P())


def test_custom_rules_override_the_table(capfd):
    """``sharding_rules`` replaces entries: here the vocabulary and KV heads are replicated."""
    mesh, rules = layout_for(
        LLAMA, "strategy=fsdp+tp", "mesh_tensor=2", "sharding_rules={vocab: null, kv_heads: null}"
    )
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    got, state = train(LLAMA, (mesh, rules))
    np.testing.assert_allclose(got, reference(LLAMA)[0], rtol=1e-5, atol=1e-5)
    p = state.params
    assert _same_spec(p["embed"]["table"].sharding.spec, P(None, "fsdp"))
    assert _same_spec(p["layers"]["attn"]["wk"].sharding.spec, P(None, "fsdp"))
    assert _same_spec(p["layers"]["attn"]["wq"].sharding.spec, P(None, "fsdp", "tensor"))
    assert REMAT not in capfd.readouterr().err
    # wk [L, D, K, H] would put fsdp on both D (embed) and K (kv_heads)
    with pytest.raises(ConfigError, match="both 'embed' and 'kv_heads' of param layers.attn.wk"):
        layout_for(LLAMA, "strategy=fsdp", "sharding_rules={kv_heads: fsdp}")


@pytest.mark.parametrize(
    "cfg,overrides,table",
    [
        (BERT, ["strategy=tp"], P("tensor")),
        (BART, ["strategy=fsdp+tp", "mesh_tensor=2"], P("tensor", "fsdp")),
    ],
    ids=["encoder-tp", "seq2seq-fsdp+tp"],
)
def test_every_kind_shards_the_same_way(cfg, overrides, table, capfd):
    mesh, rules = layout_for(cfg, *overrides)
    got, state = train(cfg, (mesh, rules))
    np.testing.assert_allclose(got, reference(cfg)[0], rtol=1e-5, atol=1e-5)
    assert _same_spec(state.params["embed"]["table"].sharding.spec, table)
    assert REMAT not in capfd.readouterr().err


def test_raw_lookup_remat_is_detected_and_take_rows_avoids_it(capfd):
    """The warning the tests look for is real: a plain ``table[ids]`` with the table's columns
    split over fsdp and the ids' batch split over data and fsdp makes XLA replicate the gather."""
    mesh = sharding.make_mesh(2, 2, 2)
    table_sharding = jax.sharding.NamedSharding(mesh, P("tensor", "fsdp"))
    table = jax.device_put(jnp.ones((64, 32)), table_sharding)
    ids = jax.device_put(jnp.zeros((8, 16), jnp.int32), sharding.batch_sharding(mesh))

    def loss(lookup):
        return jax.jit(jax.grad(lambda t: jnp.sum(sharding.constrain(
            lookup(t, ids), ("batch", "seq", "embed")) ** 2)))  # fmt: skip

    with sharding.use_mesh(mesh):
        loss(lambda t, i: t[i]).lower(table).compile()
        assert REMAT in capfd.readouterr().err
        loss(sharding.take_rows).lower(table * 2).compile()
        assert REMAT not in capfd.readouterr().err


def test_no_remat_on_a_mixed_mesh(capfd):
    """data x fsdp x tensor, where plain token (llama) and position (gpt2) lookups rematerialise."""
    mesh = sharding.make_mesh(2, 2, 2)
    for cfg in (LLAMA, dataclasses.replace(get_model_preset("gpt2-tiny"), n_layers=1)):
        specs = registry.get(cfg.kind).param_specs(cfg)
        tx = make_optimizer(OptimConfig(), 10, specs)
        params = registry.get(cfg.kind).init(
            jax.random.key(0), cfg, sharding.param_shardings(specs, mesh)
        )
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
        batch = jax.device_put(make_batch(cfg, 0), sharding.batch_sharding(mesh))
        with sharding.use_mesh(mesh):
            make_steps(token_loss, cfg, tx, 1)[0].lower(state, batch, jax.random.key(0)).compile()
    assert REMAT not in capfd.readouterr().err


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["strategy=tp", "model.n_heads=6"], r"n_heads=6 is not divisible by the tensor axis"),
        (["strategy=fsdp+tp", "mesh_tensor=4", "model.d_ff=90"], r"d_ff=90 is not divisible by"),
        (["strategy=tp", "model.vocab_size=500"], r"model.vocab_size=500 is not divisible"),
        (["strategy=fsdp+tp", "mesh_tensor=3"], "does not divide the 8 devices"),
        (["mesh_data=3"], "needs 3 devices but this machine has 8"),
        (["strategy=fsdp", "mesh_fsdp=4"], "needs 4 devices but this machine has 8"),
        (["sharding_rules={heads: model}"], r"rules.heads='model': use null .* data, fsdp, tensor"),
        (["sharding_rules={head: tensor}"], "rules.head: unknown logical axis; use one of batch"),
    ],
)  # fmt: skip
def test_bad_layout_is_one_config_error_before_compiling(overrides, match):
    cfg = dataclasses.replace(LLAMA, d_model=96, n_heads=8, n_kv_heads=2)
    with pytest.raises(ConfigError, match=match) as e:
        layout(resolve_train_config(None, overrides, base=_base(cfg)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["strategy=pp"], r"strategy='pp' is unknown; use one of dp, fsdp, tp, fsdp\+tp"),
        (["strategy=fsdp+tp"], r"strategy='fsdp\+tp' needs mesh_tensor"),
        (["sharding_rules=[tensor]"], "config key 'sharding_rules' expects"),
    ],
)
def test_bad_strategy_is_a_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_train_config(None, overrides)


def test_cli_reports_a_bad_layout_in_one_line(error_line, tmp_path):
    from llmzoo.cli import main

    args = ["strategy=tp", "model.n_heads=6", "model.d_model=96", f"run_dir={tmp_path}"]
    assert main(["train", *args]) == 2
    assert "model.n_heads=6 is not divisible by the tensor axis (8)" in error_line()
