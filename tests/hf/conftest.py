"""Tiny random Hugging Face models for parity tests (float32, built locally, never downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 160
COMMON = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA_LIKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    **COMMON,
)

# name -> (config class name, kwargs). Every family, plus the switches worth covering.
CONFIGS = {
    "gpt2": (
        "GPT2Config",
        dict(
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **COMMON,
        ),
    ),
    "llama": ("LlamaConfig", dict(LLAMA_LIKE, head_dim=32)),  # explicit head_dim != D / N
    "mistral": ("MistralConfig", dict(LLAMA_LIKE, sliding_window=8)),
    "qwen2": (
        "Qwen2Config",
        dict(
            LLAMA_LIKE,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=0,
            tie_word_embeddings=True,
        ),
    ),
    "gemma": (
        "GemmaConfig",
        dict(LLAMA_LIKE, num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh"),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            rotary_pct=0.5,
            use_parallel_residual=True,
            hidden_dropout=0.0,
            **COMMON,
        ),
    ),
    "bloom": (
        "BloomConfig",
        dict(
            hidden_size=64, n_layer=2, n_head=4, hidden_dropout=0.0, attention_dropout=0.0, **COMMON
        ),
    ),
}
VARIANTS = {
    "llama_bias_tied": ("LlamaConfig", dict(LLAMA_LIKE, attention_bias=True, mlp_bias=True,
                                            tie_word_embeddings=True)),
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(CONFIGS["gpt_neox"][1],
                                                  use_parallel_residual=False)),
    "rope_linear": ("LlamaConfig", dict(LLAMA_LIKE, rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    "rope_yarn": ("LlamaConfig", dict(LLAMA_LIKE, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
        "rope_theta": 10000.0})),
    "rope_llama3": ("LlamaConfig", dict(LLAMA_LIKE, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32, "rope_theta": 10000.0})),
    # ALiBi with a head count that is not a power of two (interleaved extra slopes), untied head
    "bloom_6heads_untied": ("BloomConfig", dict(CONFIGS["bloom"][1], hidden_size=48, n_head=6,
                                                tie_word_embeddings=False)),
}  # fmt: skip


def build_hf_model(name: str, seed: int = 0):
    """A tiny transformers causal LM with every parameter (norms and biases too) randomised."""
    cls_name, kwargs = {**CONFIGS, **VARIANTS}[name]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            is_norm_scale = (
                p.ndim == 1 and ("norm" in pname or "ln_" in pname) and "bias" not in pname
            )
            p.copy_(1.0 + noise if is_norm_scale and name != "gemma" else noise)
    return model.eval()


def batch(seq_len: int, lengths: tuple[int, ...], seed: int = 0):
    """Right-padded token ids and attention mask ``[B, T]`` (int64 numpy)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (len(lengths), seq_len))
    mask = (np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return tokens * mask, mask


def hf_logits(model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask))
    return out.logits.float().numpy()


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Builds (once) and saves each tiny model; returns ``name -> (model, directory)``."""
    cache = {}

    def get(name):
        if name not in cache:
            model = build_hf_model(name)
            path = tmp_path_factory.mktemp(f"hf_{name}")
            model.save_pretrained(path)
            cache[name] = (model, str(path))
        return cache[name]

    return get
