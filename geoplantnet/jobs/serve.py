"""``geoplantnet serve ROOT``: the web map viewer over a root's catalogue (:mod:`geoplantnet.viewer`), read-only, on
127.0.0.1 unless told otherwise, with uvicorn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geoplantnet.core.errors import InputError
from geoplantnet.storage.store import exists, is_local


def serve(
    root: str, storage_options: Mapping[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve ``root`` (a folder or an object-store URL, with its fsspec options) until interrupted; the root, the
    address and the bundled page are checked first (one-line errors)."""
    if not exists(root, storage_options):
        where = "no such folder" if is_local(root) else "nothing there"
        raise InputError(f"{root}: {where} (give a store root: the folder holding species.zarr, ...)")
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: not a TCP port (0..65535)")
    _check_free(host, port)
    import uvicorn

    from geoplantnet.viewer.app import create_app

    app = create_app(root, storage_options)
    print(f"geoplantnet viewer: http://{host}:{port}/ (serving {root}, read-only; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_free(host: str, port: int) -> None:
    """Refuse, in one line, an address this machine cannot listen on (a port in use, a host not of this machine)."""
    import os
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise InputError(f"cannot listen on {host}:{port} ({why}): choose another --port or --host") from None
