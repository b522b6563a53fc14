"""Training: the trainer, batching, checkpoints, divergence guards, memory estimates and multi-process set-up."""
