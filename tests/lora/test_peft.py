"""Adapters exported in the PEFT format give Hugging Face the logits of llmzoo's LoRA model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.errors import ConfigError
from llmzoo.hf import peft as hf_peft
from llmzoo.layers import lora
from llmzoo.models import registry
from llmzoo.params import init_params
from llmzoo.presets import resolve_train_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CASES = {
    # name: (preset, targets, transformers auto class, llmzoo output)
    "llama": ("llama-tiny", ("attn/w[qkvo]", "mlp/w_.*"), "AutoModelForCausalLM", "logits"),
    "bert": ("bert-tiny", ("attn/w[qvo]", "mlp/w_up"), "AutoModelForMaskedLM", "logits"),
}


def setup(name, tmp_path):
    preset, targets, auto, out = CASES[name]
    cfg = resolve_train_config(overrides=[f"model.preset={preset}", "model.vocab_size=160",
                                          "model.dtype=float32", f"lora.targets={list(targets)}",
                                          "lora.rank=4", "lora.alpha=12"])  # fmt: skip
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    params = init_params(jax.random.key(0), specs)
    adapters = lora.init_adapters(jax.random.key(1), specs, cfg.lora)
    noise = lambda x: 0.1 * np.random.default_rng(x.size).standard_normal(x.shape, np.float32)  # noqa: E731
    adapters = jax.tree.map(lambda x: x + noise(x), adapters)  # B != 0
    llmzoo.hf.save(tmp_path / "base", cfg.model, params)
    hf_peft.save_adapters(str(tmp_path / "adapter"), cfg, {"adapters": adapters})
    model = getattr(transformers, auto).from_pretrained(tmp_path / "base").eval()
    model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    return cfg, params, adapters, model, out


@pytest.mark.parametrize("name", list(CASES))
def test_peft_adapter_matches_llmzoo_lora(name, tmp_path):
    cfg, params, adapters, model, out = setup(name, tmp_path)
    tokens = np.random.default_rng(0).integers(1, 160, (2, 12))
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.ones((2, 12), jnp.int32)}
    apply = jax.jit(registry.get(cfg.model.kind).apply, static_argnames="cfg")
    got = np.asarray(
        apply(lora.apply_adapters(params, adapters, cfg.lora), batch, cfg=cfg.model)[out]
    )
    with torch.no_grad():
        want = model(torch.tensor(tokens)).logits.numpy()
    base = np.asarray(apply(params, batch, cfg=cfg.model)[out])
    assert np.abs(got - base).max() > 1e-2  # the adapters matter
    assert np.abs(got - want).max() < 1e-4
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 12.0, "LORA")


def test_fused_projection_names_the_fix():
    cfg = resolve_train_config(overrides=["model.preset=gpt2-tiny", "lora.targets=[attn/wq]"])
    specs = registry.get("decoder").param_specs(cfg.model)
    adapters = lora.init_adapters(jax.random.key(1), specs, cfg.lora)
    with pytest.raises(ConfigError, match="not a separate nn.Linear.*merge the adapters"):
        hf_peft.adapter_tensors(cfg, {"adapters": adapters})
