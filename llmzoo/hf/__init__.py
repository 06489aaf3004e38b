"""Hugging Face checkpoints <-> llmzoo: ``load``, ``save``, tokenizers and run-dir conversion.

Supported ``model_type``: gpt2, llama, mistral, qwen2, gemma, gpt_neox; the encoders bert,
roberta, albert, deberta-v2. Weights are read and written as safetensors without torch; Hugging
Face tensor names appear only in this package.
"""

from llmzoo.hf.checkpoint import load, load_config, save
from llmzoo.hf.families import FAMILIES
from llmzoo.hf.tokenizer import load_tokenizer

__all__ = ["FAMILIES", "load", "load_config", "save", "load_tokenizer"]
