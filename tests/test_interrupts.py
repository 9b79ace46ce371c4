"""Signals stop a run as Ctrl-C does (geoplantnet.runtime.interrupts), in-process; the commands stopped by real signals
are in test_cli.py."""

from __future__ import annotations

import gc
import logging
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from distributed import Client, LocalCluster

from geoplantnet.runtime.interrupts import RETRY_S, Interrupted, deferred, exit_status, stop_on_signals


def _signal_main_thread(signum: int, after: float = 0.0) -> None:
    timer = threading.Timer(after, signal.pthread_kill, (threading.main_thread().ident, signum))
    timer.start()


def test_sigterm_is_an_interrupt_and_waits_for_a_deferred_block():
    done = []
    with pytest.raises(Interrupted) as stopped, stop_on_signals():
        with deferred():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            done.append("the block ran to its end")
        done.append("never")
    assert done == ["the block ran to its end"]
    assert isinstance(stopped.value, KeyboardInterrupt) and exit_status(stopped.value) == 143
    assert exit_status(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


def test_an_interrupt_never_lands_where_distributed_cannot_cancel():
    """Ctrl-C in a client call whose coroutine has not started made distributed's event loop print a traceback
    (NameError: cannot access free variable 'future'), about one interrupt in ten here without the handler."""
    records = _Records()
    tornado = logging.getLogger("tornado.application")  # where tornado reports an exception in a loop callback
    tornado.addHandler(records)
    rng = random.Random(0)
    try:
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            for _ in range(150):
                with pytest.raises(Interrupted), stop_on_signals():
                    _signal_main_thread(signal.SIGINT, after=rng.uniform(0.001, 0.02))
                    while True:
                        client.nthreads()  # one short client call after another
    finally:
        tornado.removeHandler(records)
    assert not [m for m in records.messages if "free variable" in m], records.messages[:1]


def test_a_signal_during_a_garbage_collector_callback_is_not_lost():
    """distributed registers a gc callback; an exception raised inside one is printed as ignored and lost: a run
    stopped by SIGTERM went on to the end (exit status 0)."""
    sent = []

    def callback(phase: str, info: dict) -> None:
        if not sent:
            sent.append(phase)
            signal.raise_signal(signal.SIGTERM)  # its handler runs now, inside the callback

    gc.callbacks.append(callback)
    try:
        with pytest.raises(Interrupted), stop_on_signals():
            gc.collect()
            time.sleep(RETRY_S / 2)  # where the signal is raised (lost, it would only be raised again after RETRY_S)
    finally:
        gc.callbacks.remove(callback)
    assert sent


def test_a_driver_stuck_in_native_code_gives_up_within_seconds():
    code = (
        "import hashlib, os\n"
        "from geoplantnet.runtime.interrupts import stop_on_signals\n"
        "with stop_on_signals(give_up=os._exit, give_up_s=1.0):\n"
        "    print('ready', flush=True)\n"
        "    hashlib.pbkdf2_hmac('sha256', b'', b'', 2**31 - 1)  # native, without the GIL: no signal handler runs\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)  # inside the native call
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert time.monotonic() - sent < 3
    finally:
        proc.kill()
