"""Monte-Carlo dropout: a trained network's dropout layers switched on at prediction time, so repeated passes draw
from an approximate posterior of its outputs (Gal & Ghahramani 2016). Used for the uncertainty of impact
assessments; normalisation layers stay frozen, so only dropout varies between draws."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer with a non-zero rate (MC draws would all be equal otherwise)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@contextmanager
def mc_dropout(model: nn.Module, seed: int) -> Iterator[None]:
    """Inside the block ``model``'s dropout layers sample masks from a generator seeded by ``seed`` (the same seed
    gives the same draw, whatever ran before); on leaving, every layer's mode and the global RNG are restored (a
    model kept in a worker's cache must come back in eval mode)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in layers]
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for m in layers:
            m.train()
        try:
            yield
        finally:
            for m, mode in zip(layers, modes, strict=True):
                m.train(mode)
