"""Reading configs: the strict override loader, YAML files, ``key=value`` arguments, and back.

``configs/*.yaml`` files and ``key=value`` CLI arguments override the dataclass presets of
:mod:`llmzoo.config` through :func:`apply_overrides`, which rejects unknown keys and values of the
wrong type with an error that names the key. This module knows no particular config class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from llmzoo.errors import ConfigError

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    """YAML's safe loader without YAML 1.1's base-60 numbers: ``2:4`` (an N:M pattern) stays a
    string rather than becoming the integer 124."""

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and ":" in value and tag in _NUMBER_TAGS:
            return "tag:yaml.org,2002:str"
        return tag


def _load(stream):
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Checks (and lightly coerces: int -> float) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "3e-4" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple:
        return _tuple_ok(value, typing.get_args(tp))
    return True, value


def _tuple_ok(value: Any, args: tuple) -> tuple[bool, Any]:
    """``tuple[X, ...]`` (a list of X), ``tuple[X, Y]`` (a pair), or, for a tuple of pairs, a
    mapping (its items, e.g. ``sharding_rules``)."""
    homogeneous = len(args) == 2 and args[1] is Ellipsis
    if isinstance(value, Mapping) and homogeneous and typing.get_origin(args[0]) is tuple:
        value = list(value.items())
    if not isinstance(value, (list, tuple)):
        return False, value
    elems = [args[0]] * len(value) if homogeneous else list(args)
    if len(elems) != len(value):
        return False, value
    checked = [_type_ok(v, e) for v, e in zip(value, elems, strict=True)]
    return all(ok for ok, _ in checked), tuple(v for _, v in checked)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ``chooser(current, overrides, name) -> (base, remaining_overrides)``: picks the dataclass a
# section's overrides apply to (e.g. the ``model`` section's ``kind`` and ``preset`` keys).
Chooser = Callable[[Any, dict, str], tuple[Any, dict]]


def apply_overrides(
    cfg: Any, overrides: dict, prefix: str = "", *, choosers: Mapping[str, Chooser] | None = None
) -> Any:
    """Returns ``cfg`` with nested ``overrides`` applied, checking every key and type.

    A nested dataclass field takes a dict; a field typed ``X | None`` whose dataclass is X
    (``rope_scaling``) takes a dict that builds X. ``choosers`` maps a section's dotted name
    (``'model'``) to a function that may first swap the section's dataclass, e.g. for a
    ``kind`` or ``preset`` key (see :func:`llmzoo.presets.choose_model`); this module knows no
    model kinds itself.

    Raises:
        ConfigError: naming the first unknown key, mistyped or out-of-range value.
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a mapping")
    choosers = choosers or {}
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for key, value in dict(overrides).items():
        name = f"{prefix}{key}"
        if key not in fields:
            model_kind = getattr(cfg, "kind", None)  # a model config names its kind
            kind = f" of model.kind={model_kind!r}" if isinstance(model_kind, str) else ""
            raise ConfigError(
                f"unknown config key {name!r}; valid keys here{kind}: {', '.join(sorted(fields))}"
            )
        tp = hints[key]
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            if name in choosers:
                current, value = choosers[name](current, dict(value), name)
            changes[key] = apply_overrides(current, value, f"{name}.", choosers=choosers)
            continue
        if isinstance(value, dict):
            dc = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            if dc:
                changes[key] = _build(dc[0], dict(value), f"{name}.")
                continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            raise ConfigError(
                f"config key {name!r} expects {_type_name(tp)}, got {value!r} "
                f"({type(value).__name__})"
            )
        changes[key] = coerced
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key {prefix + key!r}; valid: {', '.join(hints)}")
        ok, values[key] = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(
                f"config key {prefix + key!r} expects {_type_name(hints[key])}, got {value!r}"
            )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix[:-1]}: {e}") from None


def parse_cli_overrides(items: list[str]) -> dict:
    """Turns ``['model.d_model=256', 'steps=10']`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. model.d_model=256)")
        key, raw = item.split("=", 1)
        try:
            value = _load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_message(f"override {item!r}", e)) from None
        node = out
        *parents, last = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _yaml_message(where: str, e: yaml.YAMLError) -> str:
    """One line for a YAML error: where, line and column, and what is wrong."""
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if isinstance(e, yaml.constructor.ConstructorError) and "tag" in str(problem):
        return f"{where}{at}: YAML tags are not allowed ({problem}); write plain values"
    return f"{where} is not valid YAML{at}: {problem}; fix the syntax"


def load_yaml(path: str) -> dict:
    """Reads a YAML override file into a dict."""
    try:
        with open(path) as f:
            data = _load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found; see configs/ for examples") from None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_message(f"config file {path!r}", e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    return data


def merge(a: dict, b: dict) -> dict:
    """Deep-merges dict ``b`` into a copy of ``a``."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict:
    """A config as plain nested dicts (for YAML/JSON)."""
    return dataclasses.asdict(cfg)
