"""Stopping on a signal: Ctrl-C (SIGINT) and SIGTERM (what ``kill``, systemd and Kubernetes send) end a run the same
way, as a :class:`KeyboardInterrupt` raised in the main thread, so every ``finally`` on the way out runs: leases are
released, temporary stores removed, the cluster stopped (:func:`geoplantnet.runtime.cluster.connect`).

:func:`stop_on_signals` installs that for a command; :func:`deferred` holds a signal back for the few statements that
must not be cut in half (a metadata write, taking a lease).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A signal arriving where an exception would be lost is delivered again this much later.
REDELIVER_S = 0.05
# While a stopped block has not ended this long after its signal, the signal is raised again: the first may have been
# swallowed by code that ignores exceptions (a library's bare except), or the clean-up be stuck.
RETRY_S = 2.0


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; a :class:`KeyboardInterrupt`, so code that handles Ctrl-C handles SIGTERM alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a run stopped by ``exc``: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def _in_unstarted_dask_call(frame: FrameType | None) -> bool:
    """Whether the main thread waits in ``distributed.utils.sync`` whose coroutine has not started yet. Interrupted
    there, distributed (2026.8) schedules the cancel of a future it has not made, and its event loop prints
    ``NameError: cannot access free variable 'future'``; a moment later the call is safe to interrupt."""
    sync = getattr(getattr(sys.modules.get("distributed.utils"), "sync", None), "__code__", None)
    while sync is not None and frame is not None:
        if frame.f_code is sync:
            return "future" not in frame.f_locals  # an unbound closure variable is absent from f_locals
        frame = frame.f_back
    return False


def _later(seconds: float, action: Callable[[], Any]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    return timer


@contextlib.contextmanager
def stop_on_signals(give_up: Callable[[int], Any] | None = None, give_up_s: float = 4.5) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread for the duration of the block (the previous
    handlers are restored after). A second signal within :data:`RETRY_S` is ignored: it would cut short the clean-up
    the first one started. With ``give_up``, ``give_up(exit status)`` is called from another thread when the block
    has not ended ``give_up_s`` after the first signal (the main thread stuck in a long native call, where Python runs
    no signal handler): a command ends there, within its promised time, whatever it was doing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main = threading.main_thread().ident
    active = threading.Event()
    active.set()
    raised: list[float] = []  # when the signal was last raised

    def again(signum: int) -> None:
        if active.is_set():
            signal.pthread_kill(main, signum)

    def handler(signum: int, frame: FrameType | None) -> None:
        if _in_unstarted_dask_call(frame):
            _later(REDELIVER_S, lambda: again(signum))
            return
        now = time.monotonic()
        if raised and now - raised[-1] < RETRY_S:
            return
        raised.append(now)
        _later(RETRY_S, lambda: again(signum))
        raise Interrupted(signum)

    def lost(unraisable: Any) -> None:
        # raised where Python prints an exception as ignored and carries on (a garbage-collector or weakref callback,
        # a __del__; distributed registers a gc callback): raise it again a moment later
        if isinstance(unraisable.exc_value, Interrupted):
            raised.clear()
            _later(REDELIVER_S, lambda: again(unraisable.exc_value.signum))
        else:
            previous_hook(unraisable)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    previous_hook, sys.unraisablehook = sys.unraisablehook, lost
    unwatch = _watch(lambda signum: active.is_set() and give_up(128 + signum), give_up_s) if give_up else None
    try:
        yield
    finally:
        active.clear()
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook
        if unwatch is not None:
            unwatch()


def _watch(action: Callable[[int], Any], after: float) -> Callable[[], None]:
    """``action(signum)`` ``after`` seconds after the first SIGINT or SIGTERM, seen on another thread through the
    signal wakeup fd (written by the C-level handler, even while the main thread runs native code); returns the
    function that stops watching."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        try:
            while data := os.read(read, 1):  # b"" once the write end is closed
                if data[0] in SIGNALS:
                    _later(after, lambda: action(data[0]))
                    return
        finally:
            os.close(read)

    threading.Thread(target=watch, name="geoplantnet signal watch", daemon=True).start()

    def unwatch() -> None:
        signal.set_wakeup_fd(previous)
        os.close(write)

    return unwatch


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
    elif handler == signal.SIG_DFL:  # what it would have done: end the process
        signal.raise_signal(signum)
