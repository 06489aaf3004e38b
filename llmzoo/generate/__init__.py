"""Text generation over any kind's cache: samplers, the decoding loop and beam search."""

from llmzoo.generate.beam import beam_search
from llmzoo.generate.decode import generate, generate_text
from llmzoo.generate.sampling import sample

__all__ = ["beam_search", "generate", "generate_text", "sample"]
