"""Configs of what is done to a trained model's matrices: low-rank adapters (LoRA), weight-only
quantization and pruning; each is an optional section of :class:`llmzoo.config.TrainConfig`."""

from __future__ import annotations

import dataclasses
import re

from llmzoo.config_rules import check_rules
from llmzoo.errors import ConfigError


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
