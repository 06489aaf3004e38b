"""Pure building blocks: attention, positional encodings, norms, MLPs, transformer blocks."""
