"""Strict config overrides: unknown keys and wrong types fail with a message naming the key."""

import dataclasses

import pytest

from llmzoo.config import (
    RULES,
    ObjectiveConfig,
    OptimConfig,
    Range,
    RopeScaling,
    TrainConfig,
)
from llmzoo.config_io import apply_overrides, load_yaml, parse_cli_overrides, to_dict
from llmzoo.errors import ConfigError
from llmzoo.models.decoder import DecoderConfig as ModelConfig
from llmzoo.presets import (
    CHOOSERS,
    get_model_preset,
    get_train_preset,
    resolve_train_config,
    train_config_from_dict,
)

BASE = TrainConfig(model=ModelConfig(), optim=OptimConfig(warmup_steps=5))


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match="'stepz'"):
        apply_overrides(BASE, {"stepz": 3})
    with pytest.raises(ConfigError, match="'model.d_modle'") as e:
        apply_overrides(BASE, {"model": {"d_modle": 3}})
    assert "d_model" in str(e.value)  # lists the valid keys


@pytest.mark.parametrize(
    "overrides,key,type_name",
    [
        ({"steps": "ten"}, "'steps'", "int"),
        ({"steps": 1.5}, "'steps'", "int"),
        ({"steps": True}, "'steps'", "int"),  # bool is not an int here
        ({"optim": {"lr": "fast"}}, "'optim.lr'", "float"),
        ({"model": {"remat": 1}}, "'model.remat'", "bool"),
        ({"model": {"sliding_window": "x"}}, "'model.sliding_window'", "int | None"),
        ({"run_dir": 5}, "'run_dir'", "str"),
    ],
)
def test_wrong_type_names_key_and_type(overrides, key, type_name):
    with pytest.raises(ConfigError) as e:
        apply_overrides(BASE, overrides)
    assert key in str(e.value) and type_name in str(e.value)


def test_int_to_float_coercion_and_nested_keys():
    cfg = apply_overrides(
        BASE,
        {"optim": {"lr": 1}, "model": {"d_model": 384, "rope_theta": 500000}, "steps": 7},
    )
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert isinstance(cfg.model.rope_theta, float)
    assert cfg.model.d_model == 384 and cfg.steps == 7
    # untouched fields keep their values; the input is not mutated
    assert cfg.model.n_layers == BASE.model.n_layers
    assert BASE.steps != 7
    # None for an optional field
    cfg = apply_overrides(cfg, {"model": {"sliding_window": 64}})
    assert cfg.model.sliding_window == 64
    assert apply_overrides(cfg, {"model": {"sliding_window": None}}).model.sliding_window is None


def test_rope_scaling_dict_builds_dataclass():
    cfg = apply_overrides(
        ModelConfig(),
        {
            "position": "rope",
            "rope_scaling": {
                "kind": "llama3",
                "factor": 8,
                "original_max_position_embeddings": 8192,
            },
        },
    )
    assert cfg.rope_scaling == RopeScaling(
        kind="llama3", factor=8.0, original_max_position_embeddings=8192
    )
    assert isinstance(cfg.rope_scaling.factor, float)
    hash(cfg)  # still hashable (used as a static jit argument)
    # a dict on an existing RopeScaling updates it
    cfg2 = apply_overrides(cfg, {"rope_scaling": {"factor": 4.0}})
    assert cfg2.rope_scaling.kind == "llama3" and cfg2.rope_scaling.factor == 4.0
    with pytest.raises(ConfigError, match="dynamic"):
        apply_overrides(ModelConfig(), {"rope_scaling": {"kind": "dynamic"}})


def test_rope_scaling_bad_key_message_names_full_key():
    with pytest.raises(ConfigError, match=r"'model\.rope_scaling\.factr'"):
        apply_overrides(BASE, {"model": {"rope_scaling": {"kind": "yarn", "factr": 2}}})
    with pytest.raises(ConfigError, match=r"'model\.rope_scaling\.factor' expects float"):
        apply_overrides(BASE, {"model": {"rope_scaling": {"kind": "yarn", "factor": "x"}}})


def test_model_validation_errors():
    with pytest.raises(ConfigError, match="n_heads=5"):
        apply_overrides(ModelConfig(), {"d_model": 64, "n_heads": 5})
    with pytest.raises(ConfigError, match="n_heads=5"):
        apply_overrides(BASE, {"model": {"d_model": 64, "n_heads": 5}})
    # an explicit head_dim lifts the divisibility requirement
    cfg = apply_overrides(ModelConfig(), {"d_model": 64, "n_heads": 5, "head_dim": 16})
    assert cfg.dim_per_head == 16
    with pytest.raises(ConfigError, match="n_kv_heads=5"):
        ModelConfig(n_heads=12, n_kv_heads=5)
    with pytest.raises(ConfigError, match="'absolute'"):
        ModelConfig(position="absolute")
    with pytest.raises(ConfigError, match="float64"):
        ModelConfig(dtype="float64")


def test_seq_len_beyond_learned_table():
    base = get_train_preset("tiny")
    limit = base.model.max_seq_len
    with pytest.raises(ConfigError, match=f"seq_len={limit + 1}"):
        apply_overrides(base, {"seq_len": limit + 1})
    # raising the table in the same override is fine, and RoPE has no table
    ok = apply_overrides(base, {"seq_len": limit + 1, "model": {"max_seq_len": limit + 1}})
    assert ok.seq_len == limit + 1
    rope = apply_overrides(base, {"seq_len": 4 * limit, "model": {"position": "rope"}})
    assert rope.seq_len == 4 * limit
    with pytest.raises(ConfigError, match="grad_accum=3"):
        apply_overrides(base, {"batch_size": 16, "grad_accum": 3})


def test_parse_cli_overrides():
    got = parse_cli_overrides(
        [
            "model.d_model=384",
            "steps=10",
            "optim.lr=0.001",
            "run_dir=runs/x=y",
            "model.sliding_window=null",
            "model.remat=true",
            "sample_prompt=",
        ]
    )
    assert got == {
        "model": {"d_model": 384, "sliding_window": None, "remat": True},
        "steps": 10,
        "optim": {"lr": 0.001},
        "run_dir": "runs/x=y",
        "sample_prompt": "",
    }
    with pytest.raises(ConfigError, match="'steps'"):
        parse_cli_overrides(["steps"])
    cfg = apply_overrides(BASE, got)
    assert cfg.optim.lr == 0.001 and cfg.model.remat == "full"  # an old boolean, read as a policy


def test_colon_values_stay_strings(tmp_path):
    # YAML 1.1 reads 2:4 as the base-60 integer 124; an N:M pattern must reach its str field.
    assert parse_cli_overrides(["prune.nm=2:4", "a=1:30:00", "b=12"]) == {
        "prune": {"nm": "2:4"},
        "a": "1:30:00",
        "b": 12,
    }
    (tmp_path / "p.yaml").write_text("prune:\n  nm: 2:4\n")
    cfg = apply_overrides(BASE, load_yaml(str(tmp_path / "p.yaml")))
    assert cfg.prune.n_m == (2, 4)


def test_exponent_floats_from_cli_and_yaml(tmp_path):
    # PyYAML follows YAML 1.1, where "3e-4" (no dot) is a string, not a float. Users write
    # lr=3e-4 on the command line and lr: 3e-4 in YAML files; both must reach the float field.
    cfg = apply_overrides(BASE, parse_cli_overrides(["optim.lr=3e-4"]))
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    path = tmp_path / "lr.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  eps: 1.0e-6\n")
    cfg = resolve_train_config(str(path))
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.eps == pytest.approx(1e-6)
    with pytest.raises(ConfigError, match="'optim.lr'"):
        apply_overrides(BASE, {"optim": {"lr": "fast"}})


def test_model_preset_key():
    override = {"model": {"preset": "gpt2-tiny", "n_layers": 3}}
    cfg = apply_overrides(BASE, override, choosers=CHOOSERS)
    assert cfg.model == dataclasses.replace(get_model_preset("gpt2-tiny"), n_layers=3)
    with pytest.raises(ConfigError, match="gpt2-huge"):
        apply_overrides(BASE, {"model": {"preset": "gpt2-huge"}}, choosers=CHOOSERS)
    with pytest.raises(ConfigError, match="'model.preset'"):  # no chooser: an unknown key
        apply_overrides(BASE, override)


def test_model_kind_selects_the_config_class():
    with pytest.raises(ConfigError, match=r"model.kind='transformer' is unknown; use one of"):
        apply_overrides(BASE, {"model": {"kind": "transformer"}}, choosers=CHOOSERS)
    # a key of another kind's config is an unknown key of this kind, named with the kind
    with pytest.raises(ConfigError, match=r"'model.type_vocab_size'.*model.kind='decoder'"):
        apply_overrides(BASE, {"model": {"type_vocab_size": 2}}, choosers=CHOOSERS)
    same = apply_overrides(BASE, {"model": {"kind": "decoder", "n_layers": 3}}, choosers=CHOOSERS)
    assert same.model == dataclasses.replace(BASE.model, n_layers=3)
    with pytest.raises(ConfigError, match="does not match DecoderConfig"):
        ModelConfig(kind="encoder")


def test_objective_config_validated():
    cfg = apply_overrides(BASE, {"objective": {"name": "mlm", "mask_prob": 0.2}})
    assert cfg.objective == ObjectiveConfig(name="mlm", mask_prob=0.2)
    with pytest.raises(ConfigError, match="objective.name='clm' is unknown"):
        apply_overrides(BASE, {"objective": {"name": "clm"}})
    with pytest.raises(ConfigError, match=r"objective.mask_prob=1.5 is out of range"):
        apply_overrides(BASE, {"objective": {"mask_prob": 1.5}})
    with pytest.raises(ConfigError, match=r"model.dropout=1.0 is out of range"):
        apply_overrides(BASE, {"model": {"dropout": 1.0}})
    with pytest.raises(ConfigError, match=r"steps=0 is out of range"):
        apply_overrides(BASE, {"steps": 0})


def test_resolve_yaml_then_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nsteps: 5\noptim:\n  warmup_steps: 5\nmodel:\n  n_layers: 2\n")
    cfg = resolve_train_config(str(path), ["steps=9", "model.d_model=96"])
    tiny = get_train_preset("tiny")
    assert cfg.steps == 9 and cfg.model.n_layers == 2 and cfg.model.d_model == 96
    assert cfg.batch_size == tiny.batch_size
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(str(tmp_path / "list.yaml"))


def test_to_dict_from_dict_round_trip():
    cfg = apply_overrides(
        get_train_preset("tiny"),
        {
            "model": {
                "position": "rope",
                "rope_scaling": {
                    "kind": "yarn",
                    "factor": 2.0,
                    "original_max_position_embeddings": 256,
                },
            }
        },
    )
    assert train_config_from_dict(to_dict(cfg)) == cfg


def _nonsense(rule):
    """A value just outside ``rule`` (a Range or a tuple of choices)."""
    if isinstance(rule, tuple):
        return "no-such-choice"
    if rule.lo is not None:
        return rule.lo if rule.lo_open else rule.lo - 1
    return rule.hi if rule.hi_open else rule.hi + 1


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_rule_rejects_a_nonsensical_value(key):
    """Walks the rules table: a value outside each rule is a ConfigError naming the key."""
    rule = RULES[key]
    value = _nonsense(rule)
    section, _, field = key.rpartition(".")
    overrides = {section: {field: value}} if section else {field: value}
    with pytest.raises(ConfigError) as e:
        apply_overrides(BASE, overrides)
    assert f"{key}=" in str(e.value) and (
        "out of range" in str(e.value) or "use one of" in str(e.value)
    )


def test_every_numeric_training_field_has_a_rule():
    import typing

    for prefix, cfg in (
        ("", BASE),
        ("optim.", BASE.optim),
        ("data.", BASE.data),
        ("objective.", BASE.objective),
    ):
        hints = typing.get_type_hints(type(cfg))
        for f in dataclasses.fields(cfg):
            if hints[f.name] in (int, float):
                assert f"{prefix}{f.name}" in RULES, f"{prefix}{f.name} has no rule"


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"optim.warmup_steps=50 exceeds steps=10"):
        apply_overrides(BASE, {"steps": 10, "optim": {"warmup_steps": 50}})
    with pytest.raises(ConfigError, match=r"mesh_data=0; use a positive axis size"):
        apply_overrides(BASE, {"mesh_data": 0})
    assert isinstance(RULES["optim.lr"], Range)
