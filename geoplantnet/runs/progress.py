"""Progress bars on the driver, one way for every command: :func:`bar` (tqdm on stderr, quiet with ``-q`` and when
stderr is not a terminal) and :class:`EpochBars`, the training epochs that Dask tasks report as events.

A training task sends each epoch's record with ``Worker.log_event(topic, ...)``
(:func:`geoplantnet.training.habitats.epoch_events`); the driver subscribes to the topic
(``Client.subscribe_topic``), so the bars follow tasks on a LocalCluster and on a remote scheduler alike, and nothing
ever waits on them: an event that never comes leaves a bar unfinished, not a run stuck.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client
    from tqdm import tqdm


def bar(total: int | None, *, progress: bool, **options: Any) -> tqdm:
    """A tqdm bar on stderr; disabled without ``progress`` (``-q``) and when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=None if progress else True, file=sys.stderr, **options)


class EpochBars:
    """One bar per task and stage (``fold 2 pre-train``: epochs, loss, ETA) while ``topic``'s events arrive;
    ``sink`` also receives every event (what a test listens to). Use as a context manager around the tasks."""

    def __init__(
        self, client: Client, topic: str, *, progress: bool, sink: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.client, self.topic, self.progress, self.sink = client, topic, progress, sink
        self.bars: dict[tuple[str, str], tqdm] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> EpochBars:
        if self.progress or self.sink is not None:
            self.client.subscribe_topic(self.topic, self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress or self.sink is not None:
            self.client.unsubscribe_topic(self.topic)
        with self.lock:
            for b in self.bars.values():
                b.close()
            self.bars.clear()

    def _event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        if self.sink is not None:
            self.sink(msg)
        if not self.progress:
            return
        key = (str(msg.get("task", "")), str(msg.get("stage", "")))
        with self.lock:
            b = self.bars.get(key)
            if b is None:
                b = bar(msg.get("epochs"), progress=True, desc=" ".join(key), unit="epoch", leave=False)
                self.bars[key] = b
            b.update(1)
            b.set_postfix(loss=f"{msg.get('loss', float('nan')):.3f}", refresh=False)
            if msg.get("last"):
                b.close()
                del self.bars[key]
