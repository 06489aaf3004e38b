"""Typed configs: frozen dataclasses with validated fields (their rules: :mod:`llmzoo.config_rules`;
the objective section: :mod:`llmzoo.config_objective`; the LoRA, quantization and pruning
sections: :mod:`llmzoo.config_tune`).

Dataclass presets are the source of truth. ``configs/*.yaml`` files and ``key=value`` CLI
arguments override them through :func:`llmzoo.config_io.apply_overrides`, which rejects unknown
keys and values of the wrong type with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import ClassVar

import jax
import jax.numpy as jnp

from llmzoo.config_objective import OBJECTIVES, ObjectiveConfig
from llmzoo.config_rules import RULES, STRATEGIES, Range, check_range, check_rules
from llmzoo.config_tune import BLOCK_MATRICES, LoraConfig, PruneConfig, QuantConfig
from llmzoo.errors import ConfigError

__all__ = [
    "BLOCK_MATRICES",
    "DTYPES",
    "OBJECTIVES",
    "REMAT_POLICIES",
    "RULES",
    "STRATEGIES",
    "DataConfig",
    "LoraConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PruneConfig",
    "QuantConfig",
    "Range",
    "RopeScaling",
    "TrainConfig",
    "check_range",
    "check_rules",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency-scaling settings (hashable, so it can live in a model config).

    Attributes:
        kind: ``'linear'``, ``'ntk'``, ``'yarn'`` or ``'llama3'``.
        factor: context extension factor.
        original_max_position_embeddings: pretraining context (yarn, llama3).
        low_freq_factor, high_freq_factor: llama3 band edges.
        beta_fast, beta_slow: yarn ramp edges in rotations.
        attention_factor: yarn cos/sin multiplier; derived from ``factor`` (and ``mscale``,
            ``mscale_all_dim``) when None.
        truncate: yarn: round the correction range to whole dimensions.
    """

    kind: str
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.kind not in ("linear", "ntk", "yarn", "llama3"):
            raise ConfigError(
                f"rope_scaling.kind={self.kind!r} is unknown; use linear, ntk, yarn or llama3"
            )
        if self.kind in ("yarn", "llama3") and self.original_max_position_embeddings is None:
            raise ConfigError(
                f"rope_scaling.kind={self.kind!r} needs original_max_position_embeddings "
                "(the pretraining context length)"
            )


DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The fields every model kind shares; each kind's config (``DecoderConfig`` ...) extends it.

    A kind's config lives in its module (:mod:`llmzoo.models.decoder` ...), and YAML selects it
    with ``model.kind``. Subclasses set the default of ``kind`` to their own name.

    Attributes:
        kind: the model kind (``decoder``, ``encoder``, ``seq2seq`` ...); fixed per subclass.
        family: the architecture family (``gpt2``, ``llama``, ``bert``, ``t5`` ...).
        vocab_size: V.
        max_seq_len: the longest sequence the model is meant to see.
        dropout: dropout rate in training (0 disables it).
        init_std: std of the normal initializer.
        dtype: compute dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (bfloat16 on GPU
            and TPU, float32 on CPU; resolved by :attr:`compute_dtype` when the model runs).
        param_dtype: storage dtype of the params (``float32`` default: mixed precision keeps
            float32 master weights and casts them to the compute dtype in each matmul).
        remat: what each block keeps for the backward pass: ``none`` (every activation),
            ``full`` (only the block's input: recompute the block), ``dots_saveable`` (the
            matmul outputs: recompute only the cheap elementwise ops) or
            ``dots_with_no_batch_dims_saveable`` (the weight matmuls' outputs: also recompute
            attention, whose ``[B, N, T, S]`` scores grow with the square of the length;
            MaxText's ``minimal``). Run configs written before the policies existed say
            ``true`` (``full``) or ``false`` (``none``).
        scan_layers: run the layers as one ``lax.scan`` (``true``: compile time does not grow
            with depth) or as an unrolled loop (``false``: each layer compiled on its own,
            without the scan's stacked per-layer buffers; faster steps for shallow models on
            CPU, at a compile time that grows with the layer count).
    """

    FAMILIES: ClassVar[tuple[str, ...]] = ()  # the kind's families; set by each subclass

    kind: str = ""
    family: str = ""
    vocab_size: int = 50257
    max_seq_len: int = 1024
    dropout: float = 0.0
    init_std: float = 0.02
    dtype: str = "auto"
    param_dtype: str = "float32"
    remat: str | bool = "none"
    scan_layers: bool = True

    def __post_init__(self):
        own = type(self).__dataclass_fields__["kind"].default
        if self.kind != own:
            raise ConfigError(
                f"model.kind={self.kind!r} does not match {type(self).__name__} (kind {own!r}); "
                "select the kind through the config loader's model.kind"
            )
        if self.FAMILIES and self.family not in self.FAMILIES:
            raise ConfigError(
                f"model.family={self.family!r} is not a family of model.kind={self.kind!r}; use "
                f"one of {', '.join(self.FAMILIES)} (or another model.kind)"
            )
        check_range("model.vocab_size", self.vocab_size, lo=1)
        check_range("model.max_seq_len", self.max_seq_len, lo=1)
        check_range("model.dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        check_range("model.init_std", self.init_std, lo=0.0)
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"model.dtype={self.dtype!r}; use auto, float32, bfloat16 or float16")
        if self.param_dtype not in DTYPES:
            raise ConfigError(
                f"model.param_dtype={self.param_dtype!r}; use float32, bfloat16 or float16"
            )
        if isinstance(self.remat, bool):  # a run config from before the remat policies
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(
                f"model.remat={self.remat!r} is unknown; use {', '.join(REMAT_POLICIES)}"
            )

    @property
    def position_limit(self) -> int | None:
        """The hard limit on sequence length (a learned position table), or None."""
        return None

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The dtype activations are computed in: ``dtype``, with ``auto`` resolved by backend."""
        if self.dtype != "auto":
            return jnp.dtype(self.dtype)
        accelerated = jax.default_backend() in ("gpu", "tpu")
        return jnp.dtype(jnp.bfloat16 if accelerated else jnp.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where training text comes from and how it is tokenized.

    Attributes:
        dataset: a TFDS name (``pydoc_topics`` is built from Python's own docs, offline), or your
            own text: a ``.txt`` or ``.jsonl`` file, a folder of them, or a glob such as
            ``'corpus/**/*.txt'`` (see :mod:`llmzoo.data.local_text`).
        text_key: the feature holding the text (for ``.jsonl`` files, the key of each record).
        label_key: classification fine-tuning: the key (JSONL) or column (CSV) of the label.
        tokens_key, tags_key: token classification: the JSONL keys of the words and their BIO
            tags (see :mod:`llmzoo.data.labeled`).
        train_split, eval_split: TFDS split names; local files have ``train`` and ``validation``.
        data_dir: where TFDS datasets are built or cached (local files are prepared here too).
        txt_documents: a ``.txt`` file is one document (``file``), or each of its blank-line
            separated blocks is one (``paragraph``).
        eval_fraction: the share of local documents held out as ``validation``, chosen by a
            stable hash of each document's file and index.
        tokenizer: path of a SentencePiece ``.model``; trained on ``dataset`` if missing and
            ``train_tokenizer`` is set. Empty (the default) means one per dataset and vocabulary
            in ``data_dir`` (see :attr:`tokenizer_path`).
        train_tokenizer: train the tokenizer when the file is missing.
        vocab_size: the tokenizer's vocabulary size when training one.
        tokenizer_type: ``bpe`` or ``unigram``.
        shards: how many independent pipelines build each training batch, each reading every
            ``shards``-th document into its own block of rows (see :mod:`llmzoo.data.shards`).
            0 (the default) means one per process. Fix it (e.g. to the largest process count
            you will use) to see the same batches, and resume, on any number of processes.
    """

    dataset: str = "pydoc_topics"
    text_key: str = "text"
    label_key: str = "label"
    tokens_key: str = "tokens"
    tags_key: str = "tags"
    train_split: str = "train"
    eval_split: str = "validation"
    data_dir: str = "data_cache"
    tokenizer: str = ""
    train_tokenizer: bool = True
    vocab_size: int = 2048
    tokenizer_type: str = "bpe"
    txt_documents: str = "file"
    eval_fraction: float = 0.1
    shards: int = 0

    def __post_init__(self):
        check_rules(self, "data.")

    @property
    def tokenizer_path(self) -> str:
        """``tokenizer``, else ``<data_dir>/<dataset>_sp<vocab_size>[_unigram].model``.

        A dataset name that is not a plain word (a path or a glob of your own files) is written
        as its alphanumeric runs joined by ``_``, plus a short hash of the exact name and the
        options that choose its documents.
        """
        if self.tokenizer:
            return self.tokenizer
        name = self.dataset
        if not re.fullmatch(r"\w+", name) or os.path.exists(name):
            key = f"{name}|{self.text_key}|{self.txt_documents}|{self.eval_fraction}"
            digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
            name = "_".join(re.findall(r"[A-Za-z0-9]+", name)[-4:] + [digest])
        suffix = "_unigram" if self.tokenizer_type == "unigram" else ""
        return os.path.join(self.data_dir, f"{name}_sp{self.vocab_size}{suffix}.model")


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

    def __post_init__(self):
        check_rules(self, "optim.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything ``llmzoo train`` needs.

    Attributes:
        model: the model kind's config (``DecoderConfig``, ``EncoderConfig`` ...).
        data, optim, objective: nested configs.
        run_dir: where checkpoints, ``config.yaml`` and ``metrics.jsonl`` go.
        steps: total optimizer steps.
        batch_size: sequences per optimizer step (global, across devices).
        grad_accum: micro-batches per step (batch_size must divide by it).
        seq_len: tokens per training sequence T (the encoder input length of seq2seq models).
        seed: base seed; step ``s`` uses ``fold_in(key(seed), s)``.
        eval_every, eval_batches: periodic validation.
        ckpt_every, keep_checkpoints: Orbax checkpointing cadence and ``max_to_keep``.
        log_every: metrics cadence.
        strategy: how training is sharded over all devices: ``dp`` (data parallel), ``fsdp``
            (params and optimizer state sharded too), ``tp`` (tensor parallel) or ``fsdp+tp``
            (tensor parallel of size ``mesh_tensor``, fsdp over the rest); see
            :mod:`llmzoo.sharding`.
        mesh_data, mesh_fsdp, mesh_tensor: explicit device mesh sizes (-1 = the rest); each one
            set replaces the strategy's size for that axis (``strategy=fsdp mesh_data=2``: two
            fsdp groups). None (the default) leaves it to the strategy.
        sharding_rules: overrides of the logical-axis rules table (``llmzoo.sharding.RULES``), a
            YAML mapping from logical axis to a mesh axis, a list of them, or null (replicated),
            e.g. ``{vocab: null}``; held as ``(name, axes)`` pairs. Checked when the mesh is built.
        init_from: a run directory (or converted checkpoint) whose params initialise training.
        sample_prompt, sample_tokens: the sample printed at the end of training.
        on_nan: on a non-finite loss or gradient norm, ``stop`` (raise, naming the step; no
            checkpoint of non-finite params is ever written) or ``skip_step`` (leave params and
            optimizer state unchanged for that step and count it in the metrics).
        lora: train low-rank adapters on a frozen model (``init_from``) instead of all its
            params; None (the default) trains them all.
        quant: the run's matrices are quantized (written by ``llmzoo quantize``; read by
            ``generate`` and ``eval``); None: plain params.
        prune: the run's matrices are pruned (written by ``llmzoo prune``); a run with it set
            (or inherited from its ``init_from``) prunes its initial params and keeps the
            pruned weights at zero while it trains.
        teacher: objective ``distill``: the run directory of the teacher whose logits the
            student (``model``) learns from; it must share the student's vocabulary.
    """

    model: ModelConfig
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
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
    strategy: str = "dp"
    mesh_data: int | None = None
    mesh_fsdp: int | None = None
    mesh_tensor: int | None = None
    sharding_rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = ()
    init_from: str | None = None
    sample_prompt: str = "The "
    sample_tokens: int = 64
    on_nan: str = "stop"
    lora: LoraConfig | None = None
    quant: QuantConfig | None = None
    prune: PruneConfig | None = None
    teacher: str | None = None

    def __post_init__(self):
        check_rules(self)
        for key in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
            if getattr(self, key) == 0:
                raise ConfigError(f"{key}=0; use a positive axis size, or -1 for the rest")
        if self.strategy == "fsdp+tp" and self.mesh_tensor is None:
            raise ConfigError(
                "strategy='fsdp+tp' needs mesh_tensor, the tensor-parallel size (e.g. "
                "mesh_tensor=2); the fsdp axis takes the remaining devices"
            )
        if self.optim.warmup_steps > self.steps:
            raise ConfigError(
                f"optim.warmup_steps={self.optim.warmup_steps} exceeds steps={self.steps}; "
                "lower the warmup or train longer"
            )
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}"
            )
        limit = self.model.position_limit
        if limit is not None and self.seq_len > limit:
            raise ConfigError(
                f"seq_len={self.seq_len} exceeds the positional table "
                f"(model.max_seq_len={self.model.max_seq_len}); lower seq_len or raise "
                "model.max_seq_len"
            )
