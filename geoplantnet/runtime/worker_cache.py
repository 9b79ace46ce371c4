"""What a worker process keeps between tile tasks: a model loaded on first use, so tasks never ship weights.

The driver registers :class:`WorkerCachePlugin` before submitting tiles; a task asks :func:`worker_cache` for its
slot (``species-model``, ``habitat-model``) by a key naming exactly what is loaded (file, content hash, device). A
new key replaces the slot's entry: one model per slot per process, whatever the number of tiles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from distributed import WorkerPlugin, get_worker

from geoplantnet.core.errors import InputError

T = TypeVar("T")


class WorkerCache:
    """Slots of loaded objects, each pinned by a key; loads counted per slot (a test checks one load per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[str, Any]] = {}
        self.loads: dict[str, int] = {}

    def get(self, slot: str, key: str, load: Callable[[], T]) -> tuple[T, int]:
        """The object of ``slot`` loaded under ``key`` (``load()`` when the slot holds another key or nothing), and
        how many loads the slot has done in this process."""
        with self._lock:  # threads of one worker share the cache: one of them loads, the others wait for it
            held = self._slots.get(slot)
            if held is None or held[0] != key:
                self._slots[slot] = (key, load())
                self.loads[slot] = self.loads.get(slot, 0) + 1
            return self._slots[slot][1], self.loads[slot]


class WorkerCachePlugin(WorkerPlugin):
    """Gives each Dask worker its :class:`WorkerCache` (registered by the driver before tiles are submitted)."""

    name = "geoplantnet-model-cache"

    def setup(self, worker: Any) -> None:
        self.cache = WorkerCache()


_PROCESS_CACHE = WorkerCache()  # a tile run outside a Dask worker (a test, a debugging session)


def worker_cache() -> WorkerCache:
    """This worker's cache, or the process's own outside a worker (or before the plugin was registered)."""
    try:
        plugin = get_worker().plugins.get(WorkerCachePlugin.name)
    except ValueError:  # not in a worker
        return _PROCESS_CACHE
    cache = getattr(plugin, "cache", None)
    return cache if cache is not None else _PROCESS_CACHE


class ModelChangedError(InputError):
    """A model file or folder changed between the driver's read and a worker's load."""


def pinned(slot: str, url: str, pin: str, device: str, load: Callable[[], tuple[T, str]], what: str) -> tuple[T, int]:
    """The object of ``slot`` that ``load()`` makes from ``url`` on ``device``, kept by this worker process, and the
    loads the slot has done. ``load`` returns the object and the pin of what it read (a content hash, a version):
    pinned by the one the driver read, so a model replaced during a run is refused rather than mixed into a map."""

    def checked() -> T:
        obj, got = load()
        if got != pin:
            raise ModelChangedError(f"{url}: the {what} changed during the run; start the run again")
        return obj

    return worker_cache().get(slot, f"{url}|{pin}|{device}", checked)
