"""LoRA adapters in the Hugging Face PEFT format: ``adapter_model.safetensors`` and
``adapter_config.json``, which ``peft.PeftModel.from_pretrained`` loads onto the Hugging Face
export of the base model (:func:`llmzoo.hf.save`).

Each adapted llmzoo matrix must be one ``nn.Linear`` of the family's name map; its adapters
``a [I..., R]``, ``b [R, O...]`` become ``lora_A.weight [R, prod(I)]`` and
``lora_B.weight [prod(O), R]`` (inputs and outputs flattened as the map flattens the weight).
Fused projections (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``) and ``Conv1D`` layers have
no such split: merge the adapters and export the full model instead.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from llmzoo.config import TrainConfig
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf import families
from llmzoo.hf.safetensors_io import write_file
from llmzoo.layers.lora import matrix_layout
from llmzoo.models import registry
from llmzoo.params import flatten

PREFIX = "base_model.model."
MERGE_HINT = "merge the adapters and export the full model (llmzoo lora merge, then llmzoo export)"


def task_type(cfg: TrainConfig) -> str | None:
    """PEFT's ``task_type`` for the run's model (None: a bare encoder)."""
    head = getattr(cfg.model, "head", "lm")
    if head == "sequence_classification":
        return "SEQ_CLS"
    if head == "token_classification":
        return "TOKEN_CLS"
    return {"decoder": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}.get(cfg.model.kind)


def _linear_entry(entries, leaf: str, shape: tuple[int, ...], n_in: int):
    """The name map's entry holding ``leaf`` alone as a plain ``nn.Linear`` ``[out, in]``."""
    found = [e for e in entries if e.leaves == (leaf,) and e.name.endswith(".weight")]
    if not found:
        return None
    entry = found[0]
    probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fan_in = int(np.prod(shape[:n_in]))
    saved = np.asarray(entry.save(probe))
    if saved.shape != (probe.size // fan_in, fan_in):
        return None
    return entry if np.array_equal(saved, probe.reshape(fan_in, -1).T) else None


def _layer_names(name: str, n_layers: int) -> list[tuple[int | None, str]]:
    """``[(layer or None, Hugging Face name)]`` for one entry name (``{i}``: per layer)."""
    if "{i}" not in name:
        return [(None, name)]
    return [(i, name.format(i=i)) for i in range(n_layers)]


def adapter_tensors(cfg: TrainConfig, trainable: dict) -> tuple[dict, list[str], list[str]]:
    """The PEFT tensors of a LoRA run's ``trainable`` params.

    Returns:
        ``(tensors, lora modules, modules to save)``: ``{name: numpy array}`` with
        ``base_model.model.`` names, and the Hugging Face module names (``{i}`` per layer).

    Raises:
        ConfigError: a target or a fully trained param with no separate Hugging Face tensor.
    """
    fam = families.FAMILIES.get(cfg.model.family)
    if fam is None:
        raise ConfigError(f"model.family={cfg.model.family!r} has no Hugging Face name map")
    entries, tensors, modules, saved = fam.entries(cfg.model), {}, [], []
    specs = flatten(registry.get(cfg.model.kind).param_specs(cfg.model))
    adapters = flatten(trainable["adapters"])
    for target in sorted({p.rsplit("/", 1)[0] for p in adapters}):
        a, b = np.asarray(adapters[f"{target}/a"]), np.asarray(adapters[f"{target}/b"])
        stack, n_in = matrix_layout(specs[target])
        r = a.shape[-1]
        entry = _linear_entry(entries, target, specs[target].shape[stack:], n_in)
        if entry is None:
            raise ConfigError(
                f"lora target {target!r} is not a separate nn.Linear in Hugging Face "
                f"{cfg.model.family} (fused or Conv1D); {MERGE_HINT}"
            )
        module = entry.name[: -len(".weight")]
        modules.append(module)
        for i, name in _layer_names(module, a.shape[0] if stack else 0):
            ai, bi = (a[i], b[i]) if stack else (a, b)
            tensors[f"{PREFIX}{name}.lora_A.weight"] = ai.reshape(-1, r).T.copy()
            tensors[f"{PREFIX}{name}.lora_B.weight"] = bi.reshape(r, -1).T.copy()
    full = flatten(trainable.get("full", {}))
    for entry in entries:
        if entry.leaves and all(leaf in full for leaf in entry.leaves):
            arrays = [np.asarray(full[leaf]) for leaf in entry.leaves]
            per_layer = "{i}" in entry.name
            for i, name in _layer_names(entry.name, arrays[0].shape[0] if per_layer else 0):
                parts = [x[i] for x in arrays] if per_layer else arrays
                tensors[PREFIX + name] = np.ascontiguousarray(entry.save(*parts))
            saved.append(entry.name.rsplit(".", 1)[0])
    covered = {leaf for e in entries for leaf in e.leaves}
    missing = sorted(set(full) - covered)
    if missing:
        raise ConfigError(
            f"lora.trainable param {missing[0]!r} has no Hugging Face tensor in "
            f"{cfg.model.family}; train it with an exportable head or {MERGE_HINT}"
        )
    return tensors, modules, sorted(set(saved))


def _module_pattern(modules: list[str], all_modules: list[str]) -> list[str] | str:
    """PEFT ``target_modules``: the modules' last names where they select exactly these
    modules, else a regular expression over their full names."""
    short = sorted({m.rsplit(".", 1)[-1] for m in modules})
    chosen = [m for m in all_modules if m.rsplit(".", 1)[-1] in short]
    if sorted(chosen) == sorted(modules):
        return short
    alts = "|".join(re.escape(m).replace(re.escape("{i}"), r"\d+") for m in sorted(modules))
    return f"^({alts})$"


def save_adapters(out_dir: str, cfg: TrainConfig, trainable: dict, base_model: str = "") -> str:
    """Writes a LoRA run's adapters as a PEFT adapter directory.

    Args:
        out_dir: the directory to write (created).
        cfg: the run's config (``cfg.lora`` set).
        trainable: the run's trained params (``{'adapters': ..., 'full': ...}``).
        base_model: ``base_model_name_or_path`` to record (the base's Hugging Face export).

    Returns:
        ``out_dir``.
    """
    if cfg.lora is None:
        raise CheckpointError("this run has no lora config; only a LoRA run has adapters")
    tensors, modules, to_save = adapter_tensors(cfg, trainable)
    all_modules = [
        e.name[: -len(".weight")]
        for e in families.FAMILIES[cfg.model.family].entries(cfg.model)
        if e.name.endswith(".weight")
    ]
    config = {
        "peft_type": "LORA",
        "task_type": task_type(cfg),
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "target_modules": _module_pattern(modules, all_modules),
        "modules_to_save": to_save or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": base_model or None,
    }
    os.makedirs(out_dir, exist_ok=True)
    write_file(
        os.path.join(out_dir, "adapter_model.safetensors"),
        [(k, v.shape, v.dtype, lambda v=v: v) for k, v in sorted(tensors.items())],
    )
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return out_dir
