"""Monte-Carlo dropout: a trained network's dropout layers switched on at prediction time, so repeated passes draw
from an approximate posterior of its outputs (Gal & Ghahramani 2016). Used for the uncertainty of value maps and
impact assessments.

A draw is **one thinned network**: every dropout layer drops the same feature channels for every pixel, tile, strip
and window (``nn.Dropout`` the last axis, ``Dropout1d/2d/3d`` axis 1), from a generator seeded by (draw seed, layer).
Per-element masks (what a dropout layer in train mode does) would give every pixel its own network, so zone sums of
the draws would average the noise away and their spread shrink with the zone's size; channel masks keep draw k the
same function everywhere, which is also what makes before/after draws paired and tiles seamless.

The layers stay in eval mode (normalisation frozen); the masks are applied by forward hooks while a draw runs, under
a per-process lock that every forward pass of a cached model also takes (:func:`exclusive`), so threads of one worker
sharing a model never see each other's draws.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_LOCK = threading.RLock()


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer with a non-zero rate (MC draws would all be equal otherwise)."""
    return bool(_layers(model))


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the lock a Monte-Carlo draw holds: a forward pass of a shared model inside it sees no other thread's
    draw (taken by every prediction of a cached model)."""
    with _LOCK:
        yield


@contextmanager
def mc_dropout(model: nn.Module, seed: int) -> Iterator[None]:
    """Inside the block ``model`` is the thinned network of draw ``seed``: its dropout layers drop the channels a
    generator seeded by (``seed``, layer index) chooses, the same for every input, scaled by 1 / (1 - p)."""
    with _LOCK:
        handles = []
        for index, layer in enumerate(_layers(model)):
            masks: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}

            def thin(layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor, index: int = index,
                     masks: dict = masks) -> torch.Tensor:  # fmt: skip
                axis = -1 if type(layer) is nn.Dropout else 1
                n = output.shape[axis]
                key = (n, str(output.device), output.dtype)
                if key not in masks:
                    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
                    keep = (torch.rand(n, generator=gen) >= layer.p).to(output.dtype) / (1.0 - layer.p)
                    masks[key] = keep.to(output.device)
                shape = [1] * output.dim()
                shape[axis] = n
                return output * masks[key].view(shape)

            handles.append(layer.register_forward_hook(thin))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
