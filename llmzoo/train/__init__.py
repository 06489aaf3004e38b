"""Training: state, optimizer, pure train/eval steps, the loop and checkpoints."""
