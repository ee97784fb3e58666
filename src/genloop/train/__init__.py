"""Training: one loop for every objective, checkpoints, LoRA and freezing, continual learning, torchrun."""
