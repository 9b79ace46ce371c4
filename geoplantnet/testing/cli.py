"""The command line run in the test's own process: ``run_cli("map", "-q", ...)`` returns what a subprocess would (exit
status, stdout, stderr) without paying a fresh interpreter's imports (torch, Dask: seconds per command).

Use it wherever the process itself is not what a test checks; signals, the interpreter's exit status, a second process
racing the first and "imports none of the heavy modules" still need ``subprocess``.

What a fresh process would give the command is given to it for the call and taken back after: the environment (plus
``env``), the working directory, Python's default warning filters with warnings printed on stderr (pytest's filters
would hide warnings a test asserts are absent), a root logger without handlers (``main`` configures it) and the
levels and the Dask logging setting ``main`` sets. Output is captured at both levels: ``sys.stdout``/``sys.stderr``
and the file descriptors 1 and 2 (native libraries, the worker processes of a cluster the command starts), in that
order.
Signal handlers are ``main``'s own business: it installs them for the command and restores them after.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# A fresh interpreter's filters (python -W unset, not a debug build), most recent first as warnings.filters holds them
_DEFAULT_FILTERS = (
    ("ignore", ResourceWarning),
    ("ignore", ImportWarning),
    ("ignore", PendingDeprecationWarning),
    ("ignore", DeprecationWarning),
)
_LOGGERS = ("", "geoplantnet", "distributed")  # whose levels main sets


@dataclass
class Result:
    """What a finished command gave back, named as :class:`subprocess.CompletedProcess` names it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
) -> Result:
    """``geoplantnet ARGS`` run by :func:`geoplantnet.cli.main` in this process, in ``cwd`` with ``env`` added to the
    environment (a ``None`` value removes the variable); its exit status (``SystemExit`` included: argparse's usage
    errors, ``--help``) and everything it printed."""
    from geoplantnet.cli import main

    argv = [str(a) for a in args]
    with _fresh_process(cwd, env) as (out, err, fd_out, fd_err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    return Result(argv, int(status or 0), out.getvalue() + fd_out.read(), err.getvalue() + fd_err.read())


@contextlib.contextmanager
def _fresh_process(
    cwd: str | os.PathLike[str] | None, env: Mapping[str, str | None] | None
) -> Iterator[tuple[io.StringIO, io.StringIO, _FdText, _FdText]]:
    environ = dict(os.environ)
    here = Path.cwd()
    root = logging.getLogger()
    handlers, levels = root.handlers[:], {name: logging.getLogger(name).level for name in _LOGGERS}
    dask_logging = _dask_logging()
    out, err = io.StringIO(), io.StringIO()
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if cwd is not None:
            os.chdir(cwd)
        root.handlers = []  # so main's logging.basicConfig installs its handler on our stderr, as in a new process
        with (
            _FdText(1) as fd_out,
            _FdText(2) as fd_err,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.resetwarnings()
            for action, category in reversed(_DEFAULT_FILTERS):
                warnings.simplefilter(action, category)
            warnings.showwarning = _show_on_stderr
            yield out, err, fd_out, fd_err
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if dask_logging is not None:
            import dask.config

            dask.config.set({"logging.distributed": dask_logging})
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _dask_logging() -> object | None:
    """Dask's ``logging.distributed`` setting (``main`` sets it), where Dask is imported and it is set. Only that key
    is put back: the configuration as a whole gains the defaults of what the command imported (distributed's)."""
    config = sys.modules.get("dask.config")
    return None if config is None else config.get("logging.distributed", default=None)  # type: ignore[attr-defined]


class _FdText:
    """Captures what is written to file descriptor ``fd`` (by native code, child processes) during the block; read
    it with :meth:`read` after."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._text = ""

    def __enter__(self) -> _FdText:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()  # type: ignore[union-attr]
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(self.fd)
        os.dup2(self._file.fileno(), self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()  # type: ignore[union-attr]
        os.dup2(self._saved, self.fd)
        os.close(self._saved)
        self._file.seek(0)
        self._text = self._file.read().decode(errors="replace")
        self._file.close()

    def read(self) -> str:
        return self._text


def cli_sets(overrides: Sequence[str]) -> list[str]:
    """``--set`` arguments for each of ``overrides``."""
    return [a for s in overrides for a in ("--set", s)]
