"""A real STAC API on loopback: ``rustac serve`` in memory, or over pgstac on a private PostgreSQL + PostGIS cluster.

The in-memory backend starts in about a second and needs nothing else (the demo uses it), but its ``query``/``filter``
return nothing, which is why :mod:`geoplantnet.sources.catalog` re-checks filters on the client. The pgstac backend is
the
production shape (PostgreSQL 15 + PostGIS, schema by ``pypgstac migrate``) and is what the tests search against.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from geoplantnet.core.errors import ServiceError

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("GEOPLANTNET_PG_BIN", "/usr/lib/postgresql/15/bin"))
Backend = Literal["memory", "pgstac"]
# Properties searches sort and filter on; pgstac ignores sortby on properties it does not know as queryables.
QUERYABLES = {
    "eo:cloud_cover": ('{"type": "number", "minimum": 0, "maximum": 100}', "to_float"),
    "platform": ('{"type": "string"}', "to_text"),
}


class StacServerError(ServiceError):
    """The server or its database could not start, load or stop (the message says which step and why)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _rustac() -> str:
    exe = shutil.which("rustac", path=str(Path(sys.executable).parent)) or shutil.which("rustac")
    if not exe:
        raise StacServerError("the `rustac` command is missing: pip install 'geoplantnet[stac]'")
    return exe


def _tail(path: Path, n: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def _detail(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def _check_pair(collection: Path, items: Path) -> None:
    for path in (collection, items):
        if not Path(path).is_file():
            raise StacServerError(f"cannot load {path}: no such file")
    try:
        json.loads(Path(collection).read_text())["id"]
    except (ValueError, KeyError, TypeError):
        raise StacServerError(f"{collection} is not a STAC collection JSON (no 'id')") from None


class _Postgres:
    """A throwaway PostgreSQL cluster in a temporary folder, on 127.0.0.1 only, owned by an unprivileged user.

    Over TCP the ``postgres`` superuser needs a random password made for this cluster, so no other local user can log
    in through the port. The Unix socket sits in the server's private folder (mode 0700), which only its owner (and
    root) can enter; it trusts whoever reaches it, and rustac connects through it, because ``rustac serve`` takes its
    connection string on the command line, where every local user can read it (``ps``).
    """

    def __init__(self, root: Path) -> None:
        if not (PG_BIN / "initdb").exists():
            raise StacServerError(f"PostgreSQL 15 not found in {PG_BIN}: run scripts/install_postgis.sh")
        if not Path("/usr/share/postgresql/15/extension/postgis.control").exists():
            raise StacServerError("PostGIS is not installed: run scripts/install_postgis.sh")
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.log = root / "postgres.log"
        self.password = secrets.token_urlsafe(24)  # URL-safe, so it needs no quoting in a DSN
        # initdb refuses to run as root; the server runs as the `postgres` system user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            try:
                shutil.chown(root, "postgres")
            except LookupError:
                raise StacServerError(
                    "running as root needs a `postgres` system user: run scripts/install_postgis.sh"
                ) from None

    def url(self, database: str = "stac") -> str:
        """The password-carrying DSN over TCP (for psycopg and pypgstac in this process; never log it)."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        return self.url("stac")

    @property
    def socket_dsn(self) -> str:
        """The DSN through the private Unix socket: no password, safe on a command line."""
        return f"host={self.root} port={self.port} user=postgres dbname=stac"

    def redact(self, text: str) -> str:
        """``text`` with this cluster's password masked (for error messages that may quote a DSN)."""
        return text.replace(self.password, "***")

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True)
        if proc.returncode:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise StacServerError(self.redact(f"{Path(args[0]).name} failed: {detail[0]} (log: {_tail(self.log)})"))

    def _initdb(self) -> None:
        # The password reaches initdb in a file only the server's user can read, deleted right after: never argv.
        pwfile = self.root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if self._as:
                shutil.chown(pwfile, "postgres")
            auth = ["--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"]
            # --no-sync and fsync=off: a throwaway cluster need not survive a power cut (initdb 2.2 s -> 1.2 s).
            initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", *auth, "-E", "UTF8"]
            self._run(*initdb, "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        self._initdb()
        # Only loopback TCP, and the socket in the private folder (-k); unix_socket_permissions=0700 keeps the socket
        # itself closed to others too, should the folder's mode ever change.
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c unix_socket_permissions=0700"
            " -c fsync=off -c full_page_writes=off"
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")
        try:
            self._create_schema()
        except Exception as exc:  # psycopg / pypgstac errors, with the server log for the cause
            raise StacServerError(
                self.redact(f"pgstac set-up failed: {_detail(exc)} (log: {_tail(self.log)})")
            ) from None

    def _create_schema(self) -> None:
        import psycopg
        from pypgstac.db import PgstacDB
        from pypgstac.migrate import Migrate

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE stac")
            # Without this every search is a 500 (pgstac functions live in their own schema).
            conn.execute("ALTER DATABASE stac SET search_path TO pgstac, public")
        with PgstacDB(dsn=self.dsn) as db:
            Migrate(db).run_migration()
        # pgstac ships id, geometry and datetime as queryables; sortby/filter on anything else needs registering.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, (definition, wrapper) in QUERYABLES.items():
                conn.execute(
                    "INSERT INTO pgstac.queryables (name, definition, property_wrapper) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (name, definition, wrapper),
                )

    def load(self, collection: Path, items: Path) -> None:
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods

        step = f"loading {collection}"
        try:
            with PgstacDB(dsn=self.dsn) as db:
                loader = Loader(db=db)
                loader.load_collections(str(collection), insert_mode=Methods.upsert)
                step = f"loading {items}"
                loader.load_items(str(items), insert_mode=Methods.upsert)
        except Exception as exc:  # psycopg, pypgstac and JSON errors: say which file
            raise StacServerError(self.redact(f"{step} into pgstac failed: {_detail(exc)}")) from None

    def stop(self) -> None:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().split()[0])
        stop = [*self._as, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-t", "20", "-w", "stop"]
        if subprocess.run(stop, capture_output=True).returncode and _alive(pid):
            log.warning("pg_ctl stop failed; killing postgres %d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the postmaster takes its children down
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StacServer:
    """A STAC API on ``host``; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, backend: Backend = "memory", host: str = "127.0.0.1", port: int = 0) -> None:
        if backend not in ("memory", "pgstac"):
            raise StacServerError(f"unknown STAC backend {backend!r} (memory or pgstac)")
        if host not in ("127.0.0.1", "localhost"):
            log.warning("serving the STAC API on %s, not loopback", host)
        self.backend = backend
        self.host = host
        self.port = port or free_port(host)
        self._root: Path | None = None
        self._pg: _Postgres | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._hrefs: list[tuple[Path, Path]] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the API process is up."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pgstac_dsn(self) -> str | None:
        """The pgstac database's DSN over loopback TCP, with its password (a secret: do not log it); None in memory."""
        return self._pg.dsn if self._pg is not None else None

    @property
    def workdir(self) -> Path | None:
        """The temporary folder of this server's logs and database (None when stopped)."""
        return self._root

    def start(self, collections: Sequence[tuple[Path, Path]] = (), timeout: float = 60.0) -> StacServer:
        """Start the server with ``(collection.json, items.ndjson)`` pairs loaded; waits until it answers."""
        for pair in collections:
            _check_pair(*pair)
        self._root = Path(tempfile.mkdtemp(prefix="geoplantnet-stac-"))
        try:
            if self.backend == "pgstac":
                self._pg = _Postgres(self._root)
                self._pg.start()
            self._hrefs = [(Path(c), Path(i)) for c, i in collections]
            if self._pg is not None:
                for pair in self._hrefs:
                    self._pg.load(*pair)
            self._spawn(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, timeout: float) -> None:
        assert self._root is not None
        cmd = [_rustac(), "serve", "--addr", f"{self.host}:{self.port}"]
        if self._pg is not None:
            cmd += ["--pgstac", self._pg.socket_dsn]
        else:
            cmd += [str(p) for pair in self._hrefs for p in pair]
        logfile = self._root / "rustac.log"
        with open(logfile, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StacServerError(f"rustac serve exited with {self._proc.returncode}: {_tail(logfile)}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/collections", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise StacServerError(f"STAC API at {self.url} did not answer within {timeout:.0f} s: {_tail(logfile)}")

    def load(self, collection: Path, items: Path) -> None:
        """Add (or update) a collection and its items; the in-memory server restarts with the new set."""
        _check_pair(collection, items)
        pair = (Path(collection), Path(items))
        if self._pg is not None:
            self._pg.load(*pair)
            return
        if pair not in self._hrefs:
            self._hrefs.append(pair)
        self._kill()
        self._spawn(60.0)

    def _kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop the API and the database, and remove their temporary folder."""
        self._kill()
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> StacServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(backend: Backend, host: str, port: int, collections: Sequence[tuple[Path, Path]]) -> StacServer:
    """Start a server of ``backend`` with ``collections`` loaded and return it (call ``.stop()`` when done)."""
    return StacServer(backend, host, port).start(collections)


@contextlib.contextmanager
def serving(backend: Backend, collections: Sequence[tuple[Path, Path]]) -> Iterator[StacServer]:
    """A server for the duration of a ``with`` block."""
    server = start_server(backend, "127.0.0.1", 0, collections)
    try:
        yield server
    finally:
        server.stop()


def serve_forever(backend: Backend, host: str, port: int, collections: Sequence[tuple[Path, Path]]) -> None:
    """Serve until Ctrl-C or SIGTERM, printing the URL (for ``geoplantnet stac serve``)."""
    server = start_server(backend, host, port, collections)
    stop = False

    def _handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, _handler)
    print(f"STAC API ({backend}) at {server.url} - Ctrl-C to stop", flush=True)
    try:
        while not stop and server.running:
            time.sleep(0.5)
        if not stop:
            logfile = Path(server.workdir or ".") / "rustac.log"
            raise StacServerError(f"rustac serve stopped on its own: {_tail(logfile)}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
