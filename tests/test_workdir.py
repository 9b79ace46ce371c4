"""The workdir (storage/workdir.py): a local folder or an object-store URL, files written whole, folders complete
only once marked, fetched once per process into its scratch; against a real S3 server (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoplantnet.storage.workdir import COMPLETE, Workdir, scratch


def _folder(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.bin").write_bytes(text.encode())
    (root / "sub" / "b.txt").write_text(text * 2)
    return root


def _roundtrip(work: Workdir, tmp_path: Path) -> None:
    assert not work.exists("set")
    work.put(_folder(tmp_path / "src", "one"), "models", "set")
    assert work.complete("models", "set") and work.exists("models", "set", "sub", "b.txt")
    first = work.fetch("models", "set")
    assert (first / "sub" / "b.txt").read_text() == "oneone"
    assert work.local or not (first / COMPLETE).exists()  # a copy holds the files, not the marker
    assert work.local or first.is_relative_to(scratch())
    assert work.fetch("models", "set") == first  # fetched once per upload
    work.put(_folder(tmp_path / "src", "two"), "models", "set")
    second = work.fetch("models", "set")
    assert (second / "a.bin").read_bytes() == b"two"  # a re-upload is fetched again
    got = work.get("models", "set", into=tmp_path / "got")
    assert (got / "sub" / "b.txt").read_text() == "twotwo"
    # what only the workers read stays on the store (the published region's COGs)
    lean = work.get("models", "set", into=tmp_path / "lean", skip=(".bin",))
    assert (lean / "sub" / "b.txt").exists() and not (lean / "a.bin").exists()
    assert work.local or not (work.fetch("models", "set", skip=(".bin",)) / "a.bin").exists()
    assert work.write_bytes(b"xyz", "cache", "one.pt") == work.url("cache", "one.pt")
    assert work.read_bytes("cache", "one.pt") == b"xyz"
    assert work.child("cache").read_bytes("one.pt") == b"xyz"
    assert work.put(tmp_path / "src" / "a.bin", "cache", "a.bin") == work.url("cache", "a.bin")
    assert work.read_bytes("cache", "a.bin") == b"two"
    with pytest.raises(FileNotFoundError):
        work.read_bytes("cache", "none.pt")
    work.remove("models", "set")
    # (an object store may keep the empty "folder" a prefix was: only its files and marker are gone)
    assert not work.complete("models", "set") and not work.exists("models", "set", "sub", "b.txt")
    work.remove("models", "never")  # nothing there: nothing to do
    # a folder without its marker (an interrupted upload) is not complete and is not fetched
    work.write_bytes(b"half", "models", "half", "a.bin")
    assert work.exists("models", "half") and not work.complete("models", "half")
    with pytest.raises(FileNotFoundError):
        work.get("models", "half", into=tmp_path / "half")


def test_a_local_workdir_is_its_own_paths(tmp_path: Path) -> None:
    work = Workdir(str(tmp_path / "work"))
    assert work.local and work.path("a", "b") == tmp_path / "work" / "a" / "b"
    _roundtrip(work, tmp_path)
    # a folder already in place is marked, not copied; fetch is the workdir's own path
    folder = _folder(work.path("inplace"), "x")
    assert work.put(folder, "inplace") == str(folder) and work.complete("inplace")
    assert work.fetch("inplace") == folder


def test_an_object_store_workdir(tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    from geoplantnet.core.config import StoreConfig

    # credentials from the environment only: the options carry the endpoint and the timeouts
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    store = StoreConfig(storage_options={"client_kwargs": {"endpoint_url": s3_server.endpoint}}, timeout=10)
    work = Workdir.of(f"s3://{s3_server.bucket}/wd-test", store)
    assert not work.local and "key" not in work.options
    assert work.options["config_kwargs"]["connect_timeout"] == 10
    _roundtrip(work, tmp_path)
    with pytest.raises(ValueError):
        work.path("x")
