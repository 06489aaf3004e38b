"""Compressed run directories: a trained run's params quantized or pruned, written as a new run
that ``llmzoo generate``, ``eval`` and ``train init_from=`` read like any other.

- :func:`quantize_run` (``llmzoo quantize``): the target matrices become
  :class:`~llmzoo.layers.quant.QuantArray` leaves (int8 per output channel, int4 per group); the
  config records ``quant``, which :func:`llmzoo.run_dir.load_params` restores by.
- :func:`prune_run` (``llmzoo prune``): the target matrices' smallest weights are set to zero
  (by magnitude, or N:M); the config records ``prune``.

A LoRA run is merged first (its adapters folded into its base, as ``load_params`` gives it); the
written run has no ``lora`` and no ``init_from``: it holds all its params. Each run is written
through :func:`llmzoo.run_dir.write_run` (atomically: a failure leaves nothing half-written).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from llmzoo import compress
from llmzoo import run_dir as rd
from llmzoo.compress import gptq, prune
from llmzoo.config import PruneConfig, QuantConfig
from llmzoo.data import make_eval_batches, source_for
from llmzoo.errors import ConfigError, DataError
from llmzoo.hf.tokenizer import load_tokenizer
from llmzoo.models import registry
from llmzoo.params import abstract_params


def quantize_run(
    run_dir: str,
    out: str,
    *,
    method: str,
    group_size: int = 32,
    force: bool = False,
    kv_cache_dtype: str | None = None,
    calibration: str = "none",
    calibration_batches: int = 8,
) -> str:
    """Writes ``run_dir``'s params, weight-only quantized by round to nearest (or GPTQ), as the
    run ``out``.

    Args:
        run_dir: a trained or converted run (a LoRA run is merged first).
        out: the run directory to write.
        method: ``int8`` (one scale per output channel) or ``int4`` (one per ``group_size``
            input rows, two weights a byte).
        group_size: int4's group size (a matrix whose input it does not divide gets one group).
        force: replace a non-empty ``out``.
        kv_cache_dtype: decoders: also set the written run's ``model.kv_cache_dtype`` (``int8``:
            generation stores its KV cache as int8, see :mod:`llmzoo.layers.kv_cache`).
        calibration: ``none`` (round to nearest) or ``gptq`` (decoders: calibrated on
            ``calibration_batches`` batches of the run's training split,
            :mod:`llmzoo.compress.gptq`); the written leaves are alike.
        calibration_batches: GPTQ's batches (the run's ``batch_size`` x ``seq_len`` each).

    Returns:
        ``out``.

    Raises:
        ConfigError: an unknown method or bad group size, a model kind that cannot be quantized,
            an already quantized run, or a KV cache dtype that is unknown or not a decoder's.
        CheckpointError: ``run_dir`` is not a run, or ``out`` is not empty (without ``force``).
    """
    qcfg = QuantConfig(
        method=method, group_size=group_size, calibration=calibration,
        calibration_batches=calibration_batches,
    )  # fmt: skip
    cfg = rd.read_config(run_dir)
    compress.check_kind(cfg.model.kind)
    if qcfg.calibration != "none" and cfg.model.kind != "decoder":
        raise ConfigError(
            f"quant.calibration={qcfg.calibration!r} needs a decoder run, not model.kind="
            f"{cfg.model.kind!r}; use calibration none (round to nearest)"
        )
    model = cfg.model
    if kv_cache_dtype is not None:
        if not hasattr(model, "kv_cache_dtype"):
            raise ConfigError(f"--kv-cache needs a decoder run, not kind {model.kind!r}")
        model = dataclasses.replace(model, kv_cache_dtype=kv_cache_dtype)
    if cfg.quant is not None:
        raise ConfigError(
            f"{run_dir!r} is quantized already ({cfg.quant.method}); quantize the float run it "
            "was written from"
        )
    rd.check_empty(out, force=force)
    cfg, params, _ = rd.load_params(run_dir)
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    if qcfg.calibration == "gptq":
        batches = calibration_batches_of(cfg, run_dir, qcfg.calibration_batches)
        kind = registry.get(cfg.model.kind)
        forward = jax.jit(lambda p, b: kind.apply(p, b, cfg=cfg.model)["logits"])
        params = gptq.gptq_params(params, specs, qcfg, forward, batches)
    else:
        params = compress.quantize_params(params, specs, qcfg)
    written = dataclasses.replace(
        cfg, model=model, quant=qcfg, lora=None, init_from=None, run_dir=out
    )
    rd.write_run(out, written, params, rd.tokenizer_path(run_dir), force=force)
    return out


def calibration_batches_of(cfg, run_dir: str, n: int) -> list[dict]:
    """The first ``n`` batches of ``cfg``'s training split as its run trained on them (language
    modelling rows, ``batch_size`` x ``seq_len``, unshuffled), rows of padding only left out:
    ``tokens``, ``positions`` and ``segment_ids``.

    Raises:
        DataError: the split gives no rows.
    """
    tokenizer = load_tokenizer(rd.tokenizer_path(run_dir) or cfg.data.tokenizer_path)
    source = source_for(cfg.data, cfg.data.train_split)
    batches = make_eval_batches(
        source, tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_batches=n
    )
    out = []
    for batch in batches:
        keep = np.asarray(batch["loss_mask"]).sum(-1) > 0
        if keep.any():
            out.append({k: batch[k][keep] for k in ("tokens", "positions", "segment_ids")})
    if not out:
        raise DataError(f"the training split {cfg.data.train_split!r} of {run_dir!r} is empty")
    return out


def quant_bytes(run_dir: str) -> dict:
    """The stored bytes of the quantized run ``run_dir`` against its float params, from its
    config's shapes (nothing is loaded): ``{'targets': (float, quantized), 'params': (float,
    quantized)}``, ``targets`` counting the quantized matrices only (scales included)."""
    cfg = rd.read_config(run_dir)
    if cfg.quant is None:
        raise ConfigError(f"{run_dir!r} is not quantized (its config has no quant section)")
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    plain, quant = abstract_params(specs), compress.quantized_abstract(specs, cfg.quant)
    paths = compress.quant_paths(specs, cfg.quant)
    return {
        "targets": (compress.param_bytes(plain, paths), compress.param_bytes(quant, paths)),
        "params": (compress.param_bytes(plain), compress.param_bytes(quant)),
    }


def prune_run(
    run_dir: str,
    out: str,
    *,
    sparsity: float | None = None,
    nm: str | None = None,
    scope: str = "global",
    force: bool = False,
) -> str:
    """Writes ``run_dir``'s params, magnitude-pruned (:mod:`llmzoo.compress.prune`), as the run
    ``out``, whose config records ``prune`` (so that a run trained from it keeps its zeros).

    Args:
        run_dir: a trained or converted run (a LoRA run is merged first); not a quantized one.
        out: the run directory to write.
        sparsity: unstructured: the fraction of the block matrices' weights set to zero.
        nm: ``"N:M"`` structured sparsity instead (e.g. ``"2:4"``).
        scope: unstructured: ``global`` (one threshold) or ``layer`` (each matrix of each layer).
        force: replace a non-empty ``out``.

    Returns:
        ``out``.

    Raises:
        ConfigError: neither or both of ``sparsity`` and ``nm``, a sparsity outside [0, 1), a bad
            N:M or one whose M does not divide a matrix's inputs, or a quantized run.
        CheckpointError: ``run_dir`` is not a run, or ``out`` is not empty (without ``force``).
    """
    if (sparsity is None) == (nm is None):
        raise ConfigError(
            "give one of sparsity (e.g. 0.5) and nm (e.g. '2:4'), not both or neither"
        )
    pcfg = PruneConfig(nm=nm) if nm is not None else PruneConfig(sparsity=sparsity, scope=scope)
    cfg = rd.read_config(run_dir)
    if cfg.quant is not None:
        raise ConfigError(
            f"{run_dir!r} is quantized ({cfg.quant.method}); prune the float run, then quantize it"
        )
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    prune.check_nm(specs, pcfg)
    rd.check_empty(out, force=force)
    cfg, params, _ = rd.load_params(run_dir)
    params = prune.prune_params(params, specs, pcfg)
    written = dataclasses.replace(cfg, prune=pcfg, lora=None, init_from=None, run_dir=out)
    rd.write_run(out, written, params, rd.tokenizer_path(run_dir), force=force)
    return out


def measured_sparsity(run_dir: str) -> float:
    """The fraction of zeros in the pruned run ``run_dir``'s target matrices (as its newest
    checkpoint holds them)."""
    cfg, params, _ = rd.load_params(run_dir)
    if cfg.prune is None:
        raise ConfigError(f"{run_dir!r} is not pruned (its config has no prune section)")
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    return prune.sparsity(params, specs, cfg.prune)
