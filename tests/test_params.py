"""ParamSpec trees: stacking, deterministic init, counting, flattening."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.params import (
    TOGETHER_MAX_SIZE,
    ParamSpec,
    _path_key,
    abstract_params,
    fit_params,
    flatten,
    init_params,
    is_spec,
    normal,
    ones,
    param_count,
    stack,
    to_numpy,
    unflatten,
    zeros,
)


def _specs():
    return {
        "embed": {
            "table": ParamSpec((11, 4), logical_axes=("vocab", "embed")),
            "twin": ParamSpec((8,)),
        },
        "block": {
            "w": ParamSpec((4, 6), logical_axes=("embed", "mlp"), init=normal(1.0)),
            "b": ParamSpec((6,), logical_axes=("mlp",), init=zeros),
            "scale": ParamSpec((4,), init=ones),
            "twin": ParamSpec((8,)),
        },
    }


def test_stack_draws_independent_layers():
    spec = ParamSpec((5, 7), logical_axes=("embed", "mlp"), init=normal(1.0))
    stacked = stack({"w": spec}, 3)
    s = stacked["w"]
    assert s.shape == (3, 5, 7) and s.logical_axes == ("layers", "embed", "mlp")
    w = np.asarray(init_params(jax.random.key(0), stacked)["w"])
    assert w.shape == (3, 5, 7)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(w[i], w[j])
        assert 0.6 < w[i].std() < 1.4  # each layer really drawn from N(0, 1)
    # axes default to None when a spec has none
    assert stack({"s": ParamSpec((2,))}, 4, "stages")["s"].logical_axes == ("stages", None)


def test_stack_of_constant_init():
    p = init_params(jax.random.key(0), stack({"s": ParamSpec((3,), init=ones)}, 2))
    np.testing.assert_array_equal(p["s"], np.ones((2, 3)))


def test_init_params_deterministic_and_key_dependent():
    a = to_numpy(init_params(jax.random.key(0), _specs()))
    b = to_numpy(init_params(jax.random.key(0), _specs()))
    c = to_numpy(init_params(jax.random.key(1), _specs()))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["block"]["w"], c["block"]["w"])
    assert isinstance(a["block"]["w"], np.ndarray)
    np.testing.assert_array_equal(a["block"]["b"], 0.0)
    np.testing.assert_array_equal(a["block"]["scale"], 1.0)
    # leaves of the same shape and init still get different values (keys come from paths)
    assert not np.allclose(a["embed"]["twin"], a["block"]["twin"])


def test_adding_a_param_keeps_other_leaves():
    before = to_numpy(init_params(jax.random.key(3), _specs()))
    grown = _specs()
    grown["block"]["extra"] = ParamSpec((4, 4))
    grown["aaa_first"] = {"w": ParamSpec((2, 2))}  # sorts before the others
    after = to_numpy(init_params(jax.random.key(3), grown))
    for path in flatten(before):
        np.testing.assert_array_equal(flatten(before)[path], flatten(after)[path])


def test_dtype_and_abstract_params():
    specs = {"w": ParamSpec((2, 3), dtype=jnp.bfloat16), "v": ParamSpec((4,))}
    abstract = abstract_params(specs)
    assert abstract["w"] == jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)
    assert abstract["v"] == jax.ShapeDtypeStruct((4,), jnp.float32)
    params = init_params(jax.random.key(0), specs)
    assert params["w"].dtype == jnp.bfloat16 and params["w"].shape == (2, 3)


def test_param_count_on_specs_arrays_and_shapes():
    specs = _specs()
    expected = 11 * 4 + 8 + 4 * 6 + 6 + 4 + 8
    assert param_count(specs) == expected
    assert param_count(abstract_params(specs)) == expected
    assert param_count(init_params(jax.random.key(0), specs)) == expected
    assert param_count(stack(specs, 3)) == 3 * expected
    assert param_count({}) == 0


def test_param_count_gpt2_small_is_124m():
    # Radford et al. / Hugging Face: GPT-2 small has 124,439,808 parameters (tied LM head).
    from llmzoo.models import decoder
    from llmzoo.presets import get_model_preset

    assert param_count(decoder.param_specs(get_model_preset("gpt2-small"))) == 124_439_808


def test_flatten_unflatten_round_trip():
    tree = {"a": {"b": {"c": 1, "d": 2}, "e": 3}, "f": 4}
    flat = flatten(tree)
    assert flat == {"a/b/c": 1, "a/b/d": 2, "a/e": 3, "f": 4}
    assert unflatten(flat) == tree
    assert unflatten(flatten(tree, sep="."), sep=".") == tree
    specs = _specs()
    assert unflatten(flatten(specs)) == specs


def test_param_spec_axes_length_checked():
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        ParamSpec((4, 6), logical_axes=("embed",))
    ParamSpec((4, 6), logical_axes=("embed", None))  # one name (or None) per dim is fine
    ParamSpec((4, 6))  # no names at all is fine


def test_is_spec():
    assert is_spec(ParamSpec((1,)))
    assert not is_spec(jax.ShapeDtypeStruct((1,), jnp.float32))
    assert not is_spec({"w": ParamSpec((1,))})


def test_fit_params_keeps_matching_params_and_draws_the_rest_as_a_whole_init_would():
    specs = {
        "embed": {"table": ParamSpec((6, 4), logical_axes=("vocab", "embed"))},
        "score": {"w": ParamSpec((4, 3), logical_axes=("embed", None))},
    }
    source = {
        "embed": {"table": jnp.arange(24.0).reshape(6, 4)},
        "lm_head": {"w": jnp.ones((4, 6))},
        "score": {"w": jnp.ones((4, 2))},  # another shape: drawn fresh
    }
    key = jax.random.key(7)
    params, new, dropped = fit_params(specs, source, key)
    assert new == ["score/w"] and dropped == ["lm_head/w"]
    np.testing.assert_array_equal(params["embed"]["table"], source["embed"]["table"])
    whole = init_params(key, specs)
    np.testing.assert_array_equal(params["score"]["w"], whole["score"]["w"])


def _random_programs(specs) -> int:
    """How many random-bit draws the init of ``specs`` traces (each a threefry computation)."""
    text = str(jax.make_jaxpr(lambda k: init_params(k, specs))(jax.random.key(0)))
    return text.count("random_bits")


def test_small_normal_leaves_are_drawn_in_a_few_programs():
    """Init's random-number work does not grow with the number of small leaves (each separate
    draw is its own XLA fusion, about 0.1 s of compile time on CPU), while large leaves are
    drawn one by one, directly in their sharding."""
    few = {f"w{i}": ParamSpec((17 + i,)) for i in range(3)}
    many = {f"w{i}": ParamSpec((17 + i,)) for i in range(30)}  # sizes of one power-of-4 group
    assert _random_programs(few) == _random_programs(many) > 0
    big = {f"big{i}": ParamSpec((TOGETHER_MAX_SIZE + i,)) for i in (1, 2)}
    assert _random_programs({**many, **big}) == _random_programs(many) + 2


def test_leaves_drawn_together_equal_each_leaf_drawn_by_its_own_initializer():
    """Bit for bit: a leaf's values are those of its initializer called with its path key."""
    specs = {
        "a": ParamSpec((37, 61), init=normal(0.5)),
        "b": stack({"w": ParamSpec((40, 50), init=normal(2.0))}, 3)["w"],
        "c": stack({"w": ParamSpec((7,), init=normal(1.0))}, 5)["w"],  # another layer count
        "t": ParamSpec((2, 3), init=normal(1.0), dtype=jnp.bfloat16),
        "z": ParamSpec((4,), init=zeros),
        "big": ParamSpec((TOGETHER_MAX_SIZE + 3,)),
    }
    key = jax.random.key(5)
    got = init_params(key, specs)
    paths = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
    for path, s in paths:
        want = jax.jit(lambda k, p=path, s=s: s.init(_path_key(k, p), s.shape, s.dtype))(key)
        name = jax.tree_util.keystr(path)
        assert got[path[0].key].dtype == want.dtype, name
        np.testing.assert_array_equal(np.asarray(got[path[0].key]), np.asarray(want), name)
