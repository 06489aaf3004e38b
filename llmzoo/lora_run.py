"""LoRA run directories: their adapters as trained, merged into a plain run, or exported for PEFT.

A LoRA run (``lora`` set in its config) checkpoints only what it trains, ``{'adapters': ...,
'full': ...}`` (see :mod:`llmzoo.layers.lora`); its frozen base is the params of its
``init_from``. :func:`llmzoo.run_dir.load_params` gives its merged params.
"""

from __future__ import annotations

import dataclasses

import jax

from llmzoo import run_dir as rd
from llmzoo.config import TrainConfig
from llmzoo.errors import CheckpointError
from llmzoo.hf import peft as hf_peft
from llmzoo.layers import lora
from llmzoo.models import registry
from llmzoo.params import abstract_params


def read_trainable(run_dir: str) -> tuple[TrainConfig, dict]:
    """``(config, trained params)`` of a LoRA run, as its newest checkpoint holds them.

    Raises:
        CheckpointError: not a LoRA run, or no readable checkpoint.
    """
    cfg = rd.read_config(run_dir)
    if cfg.lora is None:
        raise CheckpointError(f"{run_dir!r} is not a LoRA run (its config has no lora section)")
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), abstract_params(specs)
    )
    mngr = rd.checkpoint_manager(run_dir, async_save=False)
    try:
        found = rd.restore_latest(
            mngr, lora.trainable_abstract(specs, cfg.lora, shapes), None, quarantine=False
        )
    finally:
        mngr.close()
    if found is None:
        raise CheckpointError(f"no readable checkpoint in {run_dir!r}; train the run first")
    return cfg, found[1]


def merge_run(run_dir: str, out: str, *, force: bool = False) -> str:
    """Writes the LoRA run ``run_dir`` as a plain run ``out`` (adapters merged; no lora, no
    init_from) that any llmzoo command or the Hugging Face export reads."""
    cfg, params, _ = rd.load_params(run_dir)
    if cfg.lora is None:
        raise CheckpointError(f"{run_dir!r} is not a LoRA run (its config has no lora section)")
    plain = dataclasses.replace(cfg, lora=None, init_from=None, run_dir=out)
    rd.write_run(out, plain, params, rd.tokenizer_path(run_dir), force=force)
    return out


def export_peft(run_dir: str, out: str, base_model: str = "") -> str:
    """Writes the adapters of the LoRA run ``run_dir`` as a PEFT adapter directory ``out``
    (``base_model``: the base's Hugging Face export, recorded in ``adapter_config.json``)."""
    cfg, trainable = read_trainable(run_dir)
    return hf_peft.save_adapters(out, cfg, trainable, base_model)
