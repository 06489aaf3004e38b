"""Sharding on 8 forced CPU devices (see conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from llmzoo.errors import ConfigError
from llmzoo.models import decoder
from llmzoo.params import ParamSpec, init_params
from llmzoo.presets import get_model_preset
from llmzoo.sharding import (
    STRATEGY_MESHES,
    activation_spec,
    batch_sharding,
    batch_shards,
    constrain,
    logical_to_spec,
    make_mesh,
    param_shardings,
    resolve_rules,
    strategy_mesh,
)

P = PartitionSpec


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip(f"needs 8 devices (conftest forces 8 CPU devices), got {jax.device_count()}")


@pytest.fixture(scope="module")
def mesh222():
    return make_mesh(2, 2, 2)


def test_make_mesh_shapes():
    m = make_mesh()
    assert m.axis_names == ("data", "fsdp", "tensor")
    assert dict(m.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(data=2, fsdp=-1, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh(1, 1, -1).shape) == {"data": 1, "fsdp": 1, "tensor": 8}
    assert make_mesh(2, 2, 2).devices.size == 8
    sub = make_mesh(data=-1, tensor=2, devices=jax.devices()[:4])
    assert dict(sub.shape) == {"data": 2, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(data=-1, fsdp=-1), "at most one"),
        (dict(data=3, fsdp=-1), "does not divide the 8 devices"),
        (dict(data=2, fsdp=2, tensor=1), "needs 4 devices but this machine has 8"),
        (dict(data=4, fsdp=4), "needs 16 devices"),
    ],
)
def test_make_mesh_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):  # a ConfigError: one line from the CLI
        make_mesh(**kwargs)


def test_logical_to_spec(mesh222):
    assert logical_to_spec(("batch", "seq", "embed")) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_spec(("heads", "kv_heads")) == P("tensor", None)  # tensor used once
    assert logical_to_spec((None, "head_dim", "layers")) == P(None, None, None)
    assert logical_to_spec(("unknown_axis",)) == P(None)
    # size-1 mesh axes are dropped when a mesh is given
    dp = make_mesh(data=8)
    assert logical_to_spec(("batch", "embed", "mlp"), dp) == P("data", None, None)
    assert logical_to_spec(("batch", "embed"), mesh222) == P(("data", "fsdp"), None)
    custom = (("embed", "tensor"), ("mlp", ("data", "fsdp")))
    assert logical_to_spec(("mlp", "embed"), rules=custom) == P(("data", "fsdp"), "tensor")


def test_param_shardings_replicates_only_harmless_non_divisible_dims(mesh222):
    specs = {
        "ok": ParamSpec((8, 6), logical_axes=("embed", "mlp")),
        "odd_embed": ParamSpec((3, 6), logical_axes=("embed", "mlp")),
        "mixed": ParamSpec((4, 3, 2), logical_axes=("layers", "kv_heads", "embed")),
        "unnamed": ParamSpec((4, 4)),
    }
    sh = param_shardings(specs, mesh222)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(sh))
    assert sh["ok"].spec == P("fsdp", "tensor")
    assert sh["odd_embed"].spec == P(None, "tensor")  # embed 3 over fsdp 2: replicated
    assert sh["mixed"].spec == P(None, None, "fsdp")  # 3 KV heads over tensor 2: replicated
    assert sh["unnamed"].spec == P(None, None)


@pytest.mark.parametrize(
    "spec,match",
    [
        (ParamSpec((8, 5), logical_axes=("embed", "mlp")), r"model.d_ff=5 .* tensor axis \(2\)"),
        (ParamSpec((7, 8), logical_axes=("vocab", "embed")), r"model.vocab_size=7 .* \(param w\)"),
        (ParamSpec((8, 3, 4), logical_axes=("embed", "heads", None)), "model.n_heads=3"),
    ],
)
def test_param_shardings_rejects_non_divisible_tensor_dims(mesh222, spec, match):
    with pytest.raises(ConfigError, match=match):
        param_shardings({"w": spec}, mesh222)
    dp = param_shardings({"w": spec}, make_mesh(data=8))["w"]  # no tensor axis: nothing to split
    assert dp.is_fully_replicated


def test_rules_overrides_and_strategy_meshes():
    rules = resolve_rules((("vocab", None), ("mlp", ["data", "fsdp"])))
    assert dict(rules)["vocab"] is None and dict(rules)["mlp"] == ("data", "fsdp")
    assert dict(rules)["heads"] == "tensor"  # entries not overridden keep the default
    tensor = {"fsdp+tp": 2}
    shapes = {
        n: tuple(strategy_mesh(n, tensor=tensor.get(n)).shape.values()) for n in STRATEGY_MESHES
    }
    assert shapes == {"dp": (8, 1, 1), "fsdp": (1, 8, 1), "tp": (1, 1, 8), "fsdp+tp": (1, 4, 2)}
    assert tuple(strategy_mesh("fsdp", data=2).shape.values()) == (2, 4, 1)
    with pytest.raises(ConfigError, match=r"strategy='zero3' is unknown; use one of dp, fsdp"):
        strategy_mesh("zero3")
    assert batch_shards(make_mesh(2, 2, 2)) == 4 and batch_shards(make_mesh(1, 1, 8)) == 1


def test_init_params_places_shards(mesh222):
    specs = {
        "w": ParamSpec((8, 6), logical_axes=("embed", "mlp")),
        "odd": ParamSpec((3, 5), logical_axes=("embed", "kv_heads")),
    }
    sh = param_shardings(specs, mesh222)
    params = init_params(jax.random.key(0), specs, sh)
    assert params["w"].sharding.spec == P("fsdp", "tensor")
    assert params["w"].sharding.mesh.shape == mesh222.shape
    # each device holds a [4, 3] block of w
    assert {s.data.shape for s in params["w"].addressable_shards} == {(4, 3)}
    assert params["odd"].sharding.is_fully_replicated
    # sharding does not change the values
    plain = init_params(jax.random.key(0), specs)
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(plain["w"]))
    np.testing.assert_array_equal(np.asarray(params["odd"]), np.asarray(plain["odd"]))


def test_batch_sharding(mesh222):
    s = batch_sharding(mesh222, ndim=3)
    assert s.spec == P(("data", "fsdp"), None, None)
    x = jax.device_put(jnp.zeros((8, 4)), batch_sharding(mesh222))
    assert {sh.data.shape for sh in x.addressable_shards} == {(2, 4)}


def test_constrain_identity_outside_mesh():
    x = jnp.arange(16.0).reshape(8, 2)
    assert constrain(x, ("batch", "embed")) is x
    y = jax.jit(lambda a: constrain(a * 2, ("batch", "embed")))(x)
    np.testing.assert_array_equal(y, 2 * x)
    assert y.sharding.is_fully_replicated


def test_constrain_applies_inside_set_mesh(mesh222):
    x = jnp.arange(64.0).reshape(8, 8)
    f = jax.jit(lambda a: constrain(a + 1, ("batch", "mlp")))
    with jax.set_mesh(mesh222):
        y = f(x)
    assert y.sharding.spec == P(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) + 1)
    # a dimension that does not divide its mesh axes leaves the array unconstrained
    g = jax.jit(lambda a: constrain(a + 1, ("batch", "mlp")))
    with jax.set_mesh(mesh222):
        z = g(jnp.ones((6, 8)))
    np.testing.assert_array_equal(np.asarray(z), 2.0)


def test_activation_spec_names_the_mesh_axes_that_divide(mesh222):
    assert activation_spec((8, 4), ("batch", "heads")) is None  # no mesh
    with jax.set_mesh(mesh222):
        assert activation_spec((8, 4), ("batch", "heads")) == P(("data", "fsdp"), "tensor")
        assert activation_spec((6, 3), ("batch", "heads")) == P(None, None)
        assert activation_spec((8, 3), ("batch", "seq")) == P(("data", "fsdp"), None)


def test_sharded_decoder_forward_matches_single_device(mesh222):
    cfg = get_model_preset("gpt2-tiny")
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, cfg.vocab_size)
    shardings = param_shardings(decoder.param_specs(cfg), mesh222)
    sharded = decoder.init(jax.random.key(0), cfg, shardings)
    assert sharded["layers"]["attn"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert sharded["layers"]["mlp"]["w_up"].sharding.spec == P(None, "fsdp", "tensor")
    assert sharded["embed"]["table"].sharding.spec == P("tensor", "fsdp")
    apply = jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg=cfg)["logits"])
    with jax.set_mesh(mesh222):
        toks = jax.device_put(tokens, batch_sharding(mesh222))
        out = apply(sharded, toks)
    assert out.shape == (4, 8, cfg.vocab_size)
    assert not out.sharding.is_fully_replicated
    # reference: the same values gathered to one device, no mesh
    single = jax.device_put(jax.device_get(sharded), jax.devices()[0])
    ref = apply(single, tokens)
    assert ref.sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
