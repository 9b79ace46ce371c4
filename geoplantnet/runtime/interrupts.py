"""Stopping on a signal: Ctrl-C (SIGINT) and SIGTERM (what ``kill``, systemd and Kubernetes send) end a run the same
way, as a :class:`KeyboardInterrupt` raised in the main thread, so every ``finally`` on the way out runs: leases are
released, temporary stores removed, the cluster stopped (:func:`geoplantnet.runtime.cluster.connect`).

:func:`stop_on_signals` installs that for a command; :func:`deferred` holds a signal back for the few statements that
must not be cut in half (a metadata write, taking a lease).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A signal landing in distributed's sync() before its coroutine has started is delivered again this much later.
REDELIVER_S = 0.05


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; a :class:`KeyboardInterrupt`, so code that handles Ctrl-C handles SIGTERM alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a run stopped by ``exc``: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def _sync_code() -> Any:
    utils = sys.modules.get("distributed.utils")
    return getattr(getattr(utils, "sync", None), "__code__", None)


def _in_unstarted_dask_call(frame: FrameType | None) -> bool:
    """Whether the main thread waits in ``distributed.utils.sync`` whose coroutine has not started yet. Interrupted
    there, distributed (2026.8) schedules the cancel of a future it has not made and the event loop prints
    ``NameError: cannot access free variable 'future'``; a moment later the call is safe to interrupt."""
    code = _sync_code()
    while code is not None and frame is not None:
        if frame.f_code is code:
            return "future" not in frame.f_locals  # an unbound closure variable is absent from f_locals
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread for the duration of the block (the previous
    handlers are restored after). Only the first one: a second Ctrl-C while the run stops (within seconds) would cut
    short the very clean-up it waits for, so it is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = threading.Event()
    main = threading.main_thread().ident

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        if _in_unstarted_dask_call(frame):
            timer = threading.Timer(REDELIVER_S, signal.pthread_kill, (main, signum))
            timer.daemon = True
            timer.start()
            return
        stopping.set()
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal during the block takes effect right after it (through the handler that was in place). For short
    writes that must be whole: zarr finishes a metadata write on its own IO thread, so interrupted halfway, files
    would keep appearing after the caller removed the temporary store; a lease created but not yet returned would
    be left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for signum in dict.fromkeys(caught):  # each signal once, in the order they came
        _deliver(signum, previous[signum])


def _deliver(signum: int, handler: Callable[[int, FrameType | None], Any] | int | None) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(
            signum
        )  # what it would have done: SIGINT raises KeyboardInterrupt, SIGTERM ends the process
