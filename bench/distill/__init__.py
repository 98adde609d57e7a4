"""Distillation: per-token losses, the registered stages, the training loop, one run and the grid sweep."""
