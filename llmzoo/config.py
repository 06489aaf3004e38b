"""Typed configs: frozen dataclasses, presets, and a strict override loader.

Dataclass presets are the source of truth. ``configs/*.yaml`` files and ``key=value`` CLI
arguments override them through :func:`apply_overrides`, which rejects unknown keys and values of
the wrong type with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml

from llmzoo.errors import ConfigError
from llmzoo.layers.positional import RopeScaling


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A decoder-only transformer. Families differ only in these switches.

    Attributes:
        family: ``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``gemma`` or ``gpt_neox``.
        vocab_size: V.
        d_model: D.
        n_layers: number of blocks L.
        n_heads: N query heads.
        n_kv_heads: K key/value heads (None: K = N; 1: MQA).
        head_dim: H (None: D / N).
        d_ff: F, the MLP hidden width.
        max_seq_len: the longest sequence (learned position table size; RoPE models' limit).
        position: ``learned``, ``rope``, ``alibi``, ``sinusoidal`` or ``none``.
        rope_theta: RoPE base.
        rope_fraction: fraction of H rotated (GPT-NeoX partial rotary).
        rope_scaling: optional :class:`RopeScaling`.
        norm: ``layernorm`` or ``rmsnorm``; norm_eps its epsilon; norm_bias LayerNorm bias.
        norm_zero_centered: RMSNorm scales by ``1 + w`` (Gemma).
        mlp: activation or gated kind (``gelu_tanh``, ``swiglu``, ``geglu`` ...); mlp_bias.
        qkv_bias, out_bias: biases on the q/k/v and output projections.
        parallel_residual: ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-NeoX, GPT-J).
        sliding_window: attend to at most this many most recent keys (Mistral).
        tie_embeddings: the LM head is the transposed embedding table.
        embed_scale: multiply embeddings by sqrt(D) (Gemma).
        attn_scale: logit scale override (default H ** -0.5).
        dropout: embedding and residual dropout rate (training only).
        init_std: init std; output projections use ``init_std / sqrt(2 L)`` (GPT-2).
        dtype: compute dtype (``float32`` or ``bfloat16``); params stay float32.
        remat: rematerialise each block in the backward pass.
    """

    family: str = "gpt2"
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int = 3072
    max_seq_len: int = 1024
    position: str = "learned"
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0
    rope_scaling: RopeScaling | None = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    norm_zero_centered: bool = False
    mlp: str = "gelu_tanh"
    mlp_bias: bool = True
    qkv_bias: bool = True
    out_bias: bool = True
    parallel_residual: bool = False
    sliding_window: int | None = None
    tie_embeddings: bool = True
    embed_scale: bool = False
    attn_scale: float | None = None
    dropout: float = 0.0
    init_std: float = 0.02
    dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
                "choose n_heads that divides d_model or set model.head_dim"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.position not in ("learned", "rope", "alibi", "sinusoidal", "none"):
            raise ConfigError(
                f"model.position={self.position!r} is unknown; "
                "use learned, rope, alibi, sinusoidal or none"
            )
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ConfigError(f"model.norm={self.norm!r} is unknown; use layernorm or rmsnorm")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype={self.dtype!r}; use float32, bfloat16 or float16")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.rope_fraction)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where training text comes from and how it is tokenized.

    Attributes:
        dataset: a TFDS name; ``pydoc_topics`` is built from Python's own docs, offline.
        text_key: the feature holding the text.
        train_split, eval_split: TFDS split names.
        data_dir: where TFDS datasets are built or cached.
        tokenizer: path of a SentencePiece ``.model``; trained on ``dataset`` if missing and
            ``train_tokenizer`` is set.
        train_tokenizer: train the tokenizer when the file is missing.
        vocab_size: the tokenizer's vocabulary size when training one.
        tokenizer_type: ``bpe`` or ``unigram``.
    """

    dataset: str = "pydoc_topics"
    text_key: str = "text"
    train_split: str = "train"
    eval_split: str = "validation"
    data_dir: str = "data_cache"
    tokenizer: str = "data_cache/pydoc_topics_sp2048.model"
    train_tokenizer: bool = True
    vocab_size: int = 2048
    tokenizer_type: str = "bpe"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay, global-norm clipping.

    Weight decay applies to matrices only (never to norms, biases or 1-D params).
    """

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything ``llmzoo train`` needs.

    Attributes:
        model, data, optim: nested configs.
        run_dir: where checkpoints, ``config.yaml`` and ``metrics.jsonl`` go.
        steps: total optimizer steps.
        batch_size: sequences per optimizer step (global, across devices).
        grad_accum: micro-batches per step (batch_size must divide by it).
        seq_len: tokens per training sequence T.
        seed: base seed; step ``s`` uses ``fold_in(key(seed), s)``.
        eval_every, eval_batches: periodic validation.
        ckpt_every, keep_checkpoints: Orbax checkpointing cadence and ``max_to_keep``.
        log_every: metrics cadence.
        mesh_data, mesh_fsdp, mesh_tensor: device mesh shape (-1 = the rest).
        init_from: a run directory (or converted checkpoint) whose params initialise training.
        sample_prompt, sample_tokens: the sample printed at the end of training.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 128
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 20
    ckpt_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 10
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    init_from: str | None = None
    sample_prompt: str = "The "
    sample_tokens: int = 64

    def __post_init__(self):
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}"
            )
        if self.seq_len > self.model.max_seq_len and self.model.position in ("learned",):
            raise ConfigError(
                f"seq_len={self.seq_len} exceeds the positional table "
                f"(model.max_seq_len={self.model.max_seq_len}); lower seq_len or raise "
                "model.max_seq_len"
            )


# ---------------------------------------------------------------------------------------------
# Strict overrides


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
        if not isinstance(value, (list, tuple)):
            return False, value
        (elem, *_) = typing.get_args(tp)
        checked = [_type_ok(v, elem) for v in value]
        return all(ok for ok, _ in checked), tuple(v for _, v in checked)
    return True, value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def apply_overrides(cfg: Any, overrides: dict, prefix: str = "") -> Any:
    """Returns ``cfg`` with nested ``overrides`` applied, checking every key and type.

    A nested dataclass field takes a dict; a field typed ``X | None`` whose dataclass is X
    (``rope_scaling``) takes a dict that builds X. The key ``preset`` inside the ``model`` dict
    selects a model preset (from ``llmzoo.presets``) before the other keys apply.

    Raises:
        ConfigError: naming the first unknown key or mistyped value.
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    overrides = dict(overrides)
    if "preset" in overrides and isinstance(cfg, ModelConfig):
        from llmzoo.presets import get_model_preset

        cfg = get_model_preset(overrides.pop("preset"))
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown config key {name!r}; valid keys here: {', '.join(sorted(fields))}"
            )
        tp = hints[key]
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value, f"{name}.")
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
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        *parents, last = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def load_yaml(path: str) -> dict:
    """Reads a YAML override file into a dict."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found; see configs/ for examples") from None
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


def resolve_train_config(
    config_file: str | None = None,
    overrides: list[str] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Builds a TrainConfig: preset (or ``base``), then a YAML file, then CLI overrides.

    A top-level ``preset: NAME`` key in the YAML or CLI picks a training preset.
    """
    from llmzoo.presets import get_train_preset

    data = load_yaml(config_file) if config_file else {}
    data = merge(data, parse_cli_overrides(list(overrides)))
    cfg = base
    if "preset" in data:
        cfg = get_train_preset(data.pop("preset"))
    if cfg is None:
        cfg = get_train_preset("tiny")
    return apply_overrides(cfg, data)


def from_dict(data: dict) -> TrainConfig:
    """Rebuilds a TrainConfig from :func:`to_dict` output (e.g. a run's saved config)."""
    return apply_overrides(TrainConfig(), data)
