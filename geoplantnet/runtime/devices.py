"""Which torch device a run asks for: one rule for training and every worker that loads a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from geoplantnet.core.config import ConfigError

# torch is imported when a device is resolved: commands import this module before checking their inputs
if TYPE_CHECKING:
    import torch


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when torch sees one, else CPU (never from a Dask resource label: a ``GPU`` worker may lie)."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but torch sees no CUDA device (use train.device=auto)")
    return torch.device(requested)


def use_worker_threads() -> int | None:
    """Inside a Dask task, torch computes on the worker's threads (``cluster.threads_per_worker``), not on every core:
    two workers on one machine would otherwise fight over the cores. Returns the thread count set; None (nothing
    changed) outside a worker."""
    import torch
    from distributed import get_worker

    try:
        threads = max(1, get_worker().state.nthreads)
    except ValueError:  # not on a worker
        return None
    torch.set_num_threads(threads)
    return threads
