"""Content hashes: the one place that turns settings, inputs and files into short stable keys.

``fingerprint`` hashes parts (bytes as they are, anything else as canonical JSON: sorted keys, ``str`` for what JSON
cannot hold), so the same parts always give the same key on any machine and Python version; ``file_digest`` hashes a
file's bytes. Both are sha256, cut to 16 hex digits: run fingerprints, cache folders, the virtual region's key.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

DIGITS = 16


def fingerprint(*parts: Any) -> str:
    """A stable hash of what makes an output (model bytes, grid, tiling, inputs, settings): same hash, same output."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:DIGITS]


def file_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (first 16 hex digits): the cache key of everything derived from it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:DIGITS]
