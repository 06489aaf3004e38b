"""Typed configs: frozen dataclasses with validated fields, and the one table of their rules.

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

from llmzoo.errors import ConfigError


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
REMAT_POLICIES = ("none", "full", "dots_saveable")


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
            ``full`` (only the block's input: recompute the block) or ``dots_saveable`` (the
            matmul outputs: recompute only the cheap elementwise ops). Run configs written
            before the policies existed say ``true`` (``full``) or ``false`` (``none``).
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


def check_range(
    name: str, value, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False
) -> None:
    """Raises a ConfigError naming ``name`` when ``value`` is outside ``[lo, hi]``.

    ``lo_open``/``hi_open`` exclude the bound itself.
    """
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "" if lo is None else ("(" if lo_open else "[") + f"{lo}"
        right = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
        want = f"in {left or '(-inf'}, {right or 'inf)'}"
        raise ConfigError(f"{name}={value!r} is out of range; use a value {want}")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: ``[lo, hi]``, either bound open or absent."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False


# The named sharding strategies (their meshes are in llmzoo.sharding, which checks they agree).
STRATEGIES = ("dp", "fsdp", "tp", "fsdp+tp")

_OPEN_UNIT = Range(0.0, 1.0, lo_open=True, hi_open=True)
_POSITIVE = Range(0.0, lo_open=True)

# The rules of the training configs, in one place: dotted key -> allowed range or choices.
# Cross-field rules (warmup <= steps, batch divisible by grad_accum ...) are in
# TrainConfig.__post_init__; each model kind's config checks its own fields.
RULES: dict[str, Range | tuple[str, ...]] = {
    "data.vocab_size": Range(lo=16),
    "data.tokenizer_type": ("bpe", "unigram"),
    "data.txt_documents": ("file", "paragraph"),
    "data.eval_fraction": _OPEN_UNIT,
    "data.shards": Range(lo=0),
    "optim.lr": _POSITIVE,
    "optim.min_lr_ratio": Range(0.0, 1.0),
    "optim.warmup_steps": Range(lo=0),
    "optim.b1": Range(0.0, 1.0, hi_open=True),
    "optim.b2": Range(0.0, 1.0, hi_open=True),
    "optim.eps": _POSITIVE,
    "optim.weight_decay": Range(lo=0.0),
    "optim.clip_norm": _POSITIVE,
    "objective.mask_prob": _OPEN_UNIT,
    "objective.noise_density": _OPEN_UNIT,
    "objective.mask_ratio": _OPEN_UNIT,
    "objective.mean_span_length": Range(lo=1.0),
    "objective.poisson_lambda": _POSITIVE,
    "objective.beta": _POSITIVE,
    "objective.preference_loss": ("sigmoid", "ipo", "simpo"),
    "objective.simpo_gamma": Range(lo=0.0),
    "objective.kl_coef": Range(lo=0.0),
    "objective.kl_target": _POSITIVE,
    "objective.clip_eps": _OPEN_UNIT,
    "objective.vf_coef": Range(lo=0.0),
    "objective.gamma": Range(0.0, 1.0),
    "objective.lam": Range(0.0, 1.0),
    "objective.group_size": Range(lo=2),
    "objective.temperature": _POSITIVE,
    **{
        f"objective.{key}": Range(lo=1)
        for key in ("kl_horizon", "ppo_epochs", "minibatches", "rollout_tokens")
    },
    **{
        key: Range(lo=1)
        for key in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_batches")
    },
    **{
        key: Range(lo=1) for key in ("ckpt_every", "keep_checkpoints", "log_every", "sample_tokens")
    },
    **{key: Range(lo=-1) for key in ("mesh_data", "mesh_fsdp", "mesh_tensor")},
    "strategy": STRATEGIES,
    "seed": Range(lo=0),
    "on_nan": ("stop", "skip_step"),
    "lora.rank": Range(lo=1),
    "lora.alpha": _POSITIVE,
    "lora.dropout": Range(0.0, 1.0, hi_open=True),
    "quant.method": ("int8", "int4"),
    "quant.group_size": Range(lo=1),
    "quant.calibration": ("none", "gptq"),
    "quant.calibration_batches": Range(lo=1),
    "prune.sparsity": Range(0.0, 1.0, hi_open=True),
    "prune.scope": ("global", "layer"),
    "objective.kd_temperature": _POSITIVE,
    "objective.kd_weight": Range(0.0, 1.0),
    "objective.hidden_weight": Range(lo=0.0),
}


def check_rules(cfg, prefix: str = "") -> None:
    """Checks every field of ``cfg`` named in :data:`RULES` (under ``prefix``).

    Raises:
        ConfigError: naming the first key whose value breaks its rule, and the allowed values.
    """
    for field in dataclasses.fields(cfg):
        name = f"{prefix}{field.name}"
        rule, value = RULES.get(name), getattr(cfg, field.name)
        if value is None:  # an optional field left unset
            continue
        if isinstance(rule, Range):
            check_range(
                name, value, lo=rule.lo, hi=rule.hi, lo_open=rule.lo_open, hi_open=rule.hi_open
            )
        elif rule is not None and value not in rule:
            raise ConfigError(f"{name}={value!r} is unknown; use one of {', '.join(rule)}")


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


OBJECTIVES = (
    "causal_lm",
    "mlm",
    "span_corruption",
    "denoising",
    "sequence_classification",
    "token_classification",
    "sft",
    "reward",
    "dpo",
    "ppo",
    "grpo",
    "distill",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """What the model is trained to predict, and how its inputs are corrupted.

    Attributes:
        name: ``causal_lm`` (next token), ``mlm`` (BERT masked LM), ``span_corruption`` (T5),
            ``denoising`` (BART text infilling and sentence permutation), or a fine-tuning
            objective (``init_from`` a pretrained run): ``sequence_classification``,
            ``token_classification`` (NER), ``sft`` (instruction tuning), ``reward`` (a
            pairwise reward model), ``dpo`` (direct preference optimisation), ``ppo`` or
            ``grpo`` (reinforcement learning from a reward: :mod:`llmzoo.train.rl`).
        mask_prob: mlm: fraction of tokens selected for prediction (80% masked, 10% random,
            10% kept).
        whole_word: mlm: select whole words rather than single pieces.
        noise_density: span_corruption: fraction of tokens corrupted.
        mean_span_length: span_corruption: mean length of a corrupted span.
        mask_ratio: denoising: fraction of tokens masked by text infilling.
        poisson_lambda: denoising: mean of the Poisson span lengths.
        permute_sentences: denoising: shuffle the sentences of each example.
        beta: dpo: the strength of the KL tie to the reference (the inverse temperature of
            the implicit reward); the reward model ignores it.
        preference_loss: dpo: ``sigmoid`` (DPO, Rafailov et al. 2023), ``ipo`` (Azar et al.
            2023) or ``simpo`` (Meng et al. 2024: no reference model); see
            :mod:`llmzoo.objectives.preference`.
        simpo_gamma: dpo with ``simpo``: the target reward margin gamma.
        reward: ppo, grpo: what scores a completion: a synthetic task's reward (``sort``,
            ``add``, ``end``; ``synthetic``: each prompt's own), ``word:WORD`` (the share of
            its words that are WORD) or ``run:DIR``, a reward-model run (head
            ``sequence_classification`` with one label; the score is its logit). See
            :mod:`llmzoo.train.rollout`.
        kl_coef: ppo: the weight of the per-token KL penalty to the reference in the rewards
            (its start value when adaptive); grpo: beta, the weight of the KL term.
        kl_target, kl_horizon: ppo: adapt ``kl_coef`` towards this KL per completion (Ziegler
            et al. 2019) over this horizon of rollouts; None (default) keeps it fixed.
        clip_eps: ppo, grpo: epsilon of the clipped ratio (and of PPO's clipped value loss).
        vf_coef: ppo: the weight of the value loss.
        gamma, lam: ppo: the discount and the GAE lambda.
        ppo_epochs, minibatches: ppo, grpo: passes over each iteration's rollouts, and the
            optimizer steps (minibatches) of each pass.
        group_size: grpo: completions sampled per prompt (``batch_size`` of them per iteration).
        rollout_tokens: ppo, grpo: the most tokens a completion has.
        temperature: ppo, grpo: the sampling temperature of the rollouts.
        kd_temperature: distill: the temperature tau of the teacher's and the student's
            softmax in the soft loss (Hinton et al. 2015), which is scaled by ``tau ** 2``.
        kd_weight: distill: the weight of the soft (KL to the teacher) loss; the hard-label
            (next-token) loss gets ``1 - kd_weight``.
        hidden_weight: distill: the weight of a term matching the student's final hidden
            states to the teacher's (0: none); needs equal widths (``model.d_model``).
    """

    name: str = "causal_lm"
    mask_prob: float = 0.15
    whole_word: bool = False
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    beta: float = 0.1
    preference_loss: str = "sigmoid"
    simpo_gamma: float = 0.5
    reward: str = ""
    kl_coef: float = 0.05
    kl_target: float | None = None
    kl_horizon: int = 10000
    clip_eps: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 4
    minibatches: int = 1
    group_size: int = 4
    rollout_tokens: int = 16
    temperature: float = 1.0
    kd_temperature: float = 2.0
    kd_weight: float = 0.5
    hidden_weight: float = 0.0

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ConfigError(
                f"objective.name={self.name!r} is unknown; use one of {', '.join(OBJECTIVES)}"
            )
        check_rules(self, "objective.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Low-rank adapters (LoRA, Hu et al. 2021): train ``A [in, R]`` and ``B [R, out]`` beside
    frozen weight matrices, whose outputs gain ``alpha / R * x A B`` (:mod:`llmzoo.layers.lora`).

    Attributes:
        targets: regular expressions over param paths (``layers/attn/w[qkv]``, ``mlp/w_.*``)
            choosing the matrices that get adapters; a pattern matches a path, or a trailing
            part of it that starts after a ``/`` (``attn/wq`` matches ``decoder/layers/attn/wq``).
        rank: R.
        alpha: the update's scale is ``alpha / rank``.
        dropout: dropout rate on the adapters' input in training.
        trainable: patterns (as ``targets``) of params trained in full, such as a new task head
            (PEFT's ``modules_to_save``); patterns that match nothing are ignored.
    """

    targets: tuple[str, ...] = ("attn/w[qv]",)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    trainable: tuple[str, ...] = ("score/.*", "classifier/.*", "value_head/.*")

    def __post_init__(self):
        check_rules(self, "lora.")
        if not self.targets:
            raise ConfigError("lora.targets is empty; name the matrices to adapt, e.g. [attn/wq]")
        for pattern in (*self.targets, *self.trainable):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"lora pattern {pattern!r} is not a regular expression ({e}); fix it"
                ) from None


def _check_patterns(patterns: tuple[str, ...], key: str) -> None:
    if not patterns:
        raise ConfigError(f"{key} is empty; name the matrices, e.g. [attn/wq]")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(
                f"{key} pattern {pattern!r} is not a regular expression ({e}); fix it"
            ) from None


# The weight matrices that compression touches by default: every matmul weight of the blocks
# (the layers' linear.einsum weights); embeddings, norms, biases and heads stay as they are.
BLOCK_MATRICES = ("attn/w[qkvo]", "mlp/w_(up|gate|down)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Weight-only quantization of a run's matrices (:mod:`llmzoo.layers.quant`), as
    ``llmzoo quantize`` writes it: the run's params hold quantized leaves for ``targets``.

    Attributes:
        method: ``int8`` (per output channel) or ``int4`` (per group of ``group_size`` input
            rows), round to nearest, symmetric.
        group_size: int4: input rows sharing one scale (a matrix whose input size it does not
            divide uses one group per channel).
        targets: patterns over param paths (as :class:`LoraConfig`'s) of the quantized matrices.
        calibration: ``none`` (round to nearest) or ``gptq`` (:mod:`llmzoo.compress.gptq`:
            calibrated on the run's training split; decoders only). The stored leaves are alike.
        calibration_batches: GPTQ: the training batches it calibrates on.
    """

    method: str = "int8"
    group_size: int = 32
    targets: tuple[str, ...] = BLOCK_MATRICES
    calibration: str = "none"
    calibration_batches: int = 8

    def __post_init__(self):
        check_rules(self, "quant.")
        _check_patterns(self.targets, "quant.targets")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """Pruning of a run's matrices (:mod:`llmzoo.compress.prune`), as ``llmzoo prune`` writes
    it; a run that trains from a pruned run keeps its zeros (fixed masks).

    Attributes:
        sparsity: the fraction of the ``targets``' weights set to zero, by magnitude.
        scope: ``global`` (one threshold over all targets) or ``layer`` (each matrix of each
            layer on its own).
        nm: ``"N:M"`` structured sparsity instead (``2:4``: in every group of M consecutive
            input weights of an output, the N largest are kept); None for unstructured.
        targets: patterns over param paths (as :class:`LoraConfig`'s) of the pruned matrices.
    """

    sparsity: float = 0.0
    scope: str = "global"
    nm: str | None = None
    targets: tuple[str, ...] = BLOCK_MATRICES

    def __post_init__(self):
        check_rules(self, "prune.")
        _check_patterns(self.targets, "prune.targets")
        if self.nm is not None:
            n_m = self.n_m
            if n_m is None or not 0 < n_m[0] < n_m[1]:
                raise ConfigError(
                    f"prune.nm={self.nm!r}: N:M sparsity keeps N of every M weights and needs "
                    "0 < N < M, e.g. 2:4"
                )

    @property
    def n_m(self) -> tuple[int, int] | None:
        """``(N, M)`` of ``nm`` (None when unset or not of the form ``N:M``)."""
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", self.nm or "")
        return None if m is None else (int(m.group(1)), int(m.group(2)))


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
