"""Text generation with a KV cache: samplers and the decoding loop."""

from llmzoo.generate.decode import generate, generate_text
from llmzoo.generate.sampling import sample

__all__ = ["generate", "generate_text", "sample"]
