"""Applying models: one tile read with its halo and predicted densely."""
