"""Content hashes (core.hashing): stable, order-independent for mappings, the same keys as before they moved here."""

import hashlib
import json
from pathlib import Path

from geoplantnet.core.hashing import file_digest, fingerprint


def test_fingerprint_is_canonical_json_of_the_parts() -> None:
    key = {"grid": {"resolution": 10.0, "epsg": 3035}, "version": "0.1.0"}
    # the virtual region's key was written this way: sha256 of the sorted JSON, 16 hex digits
    assert fingerprint(key) == hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})
    assert len(fingerprint(key)) == 16 and fingerprint(key) != fingerprint(key, key)


def test_fingerprint_takes_bytes_as_they_are_and_others_as_strings() -> None:
    assert fingerprint(b"weights") == hashlib.sha256(b"weights").hexdigest()[:16]
    assert fingerprint(Path("/a")) == fingerprint("/a")  # what JSON cannot hold is hashed as its str()


def test_file_digest_hashes_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one read block
    (tmp_path / "a.tif").write_bytes(data)
    (tmp_path / "b.tif").write_bytes(data)
    assert file_digest(tmp_path / "a.tif") == hashlib.sha256(data).hexdigest()[:16] == file_digest(tmp_path / "b.tif")
