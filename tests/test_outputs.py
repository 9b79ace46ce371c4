"""One way to claim an output folder or file (storage/outputs): a user's folder or file is never written into,
replaced or deleted, with or without --overwrite; the project's own earlier output is replaced only with --overwrite;
an interrupted run's leftovers never block the next. The probes run the real commands in-process on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoplantnet.cli import main
from geoplantnet.core.errors import InputError, RefusedError
from geoplantnet.storage.outputs import (
    MARKER,
    claim_file,
    claim_folder,
    claimed_folder,
    finish_folder,
    owned_folder,
    place,
    place_json,
    write_file,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "pipelines" / "examples" / "impact"
ENTRIES = ("summary.json", "report.md", "impact.gpkg")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_is_ours_by_its_marker_not_by_its_file_names(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.md").write_text("my own report")  # a name the impact report uses
    before = _tree(user)
    for overwrite in (False, True):
        with pytest.raises(RefusedError, match="geoplantnet did not write"):
            claim_folder(user, "impact report", ENTRIES, overwrite=overwrite)
    assert _tree(user) == before
    # a file where the folder should be; another kind's folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(RefusedError, match="is a file"):
        claim_folder(tmp_path / "file", "impact report", ENTRIES, overwrite=True)
    other = claim_folder(tmp_path / "sdm", "sdm report", ("summary.json",), overwrite=False)
    with pytest.raises(RefusedError, match="holds a geoplantnet sdm report, not a impact report"):
        claim_folder(other, "impact report", ENTRIES, overwrite=True)


def test_an_earlier_report_is_replaced_only_with_overwrite_and_an_interrupted_one_always(tmp_path):
    folder = tmp_path / "report"
    with claimed_folder(folder, "impact report", ENTRIES, overwrite=False):
        place(folder, "report.md", lambda p: p.write_text("old"))
        place_json(folder, "summary.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert owned_folder(folder, "impact report")
    assert (folder / "summary.json").read_text().replace(" ", "").replace("\n", "") == '{"x":null,"y":[1.0,null]}'
    with pytest.raises(RefusedError, match="holds an earlier impact report; pass --overwrite"):
        claim_folder(folder, "impact report", ENTRIES, overwrite=False)
    assert (folder / "report.md").read_text() == "old"
    claim_folder(folder, "impact report", ENTRIES, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]  # the earlier report went first
    # killed while writing: the run is unfinished, its files and a writer's partial files are cleared without asking
    place(folder, "report.md", lambda p: p.write_text("half a run"))
    (folder / ".impact.partial.gpkg").write_text("half")
    (folder / ".impact.partial.gpkg-journal").write_text("half")
    with pytest.raises(RuntimeError):  # a writer that fails leaves no partial file behind
        place(folder, "summary.json", lambda p: (p.write_text("{"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert not list(folder.glob(".summary*"))
    assert not owned_folder(folder, "impact report")
    claim_folder(folder, "impact report", ENTRIES, overwrite=False)
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    # a user's file dropped into our folder: refused, kept
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(RefusedError, match=r"mine\.txt"):
        claim_folder(folder, "impact report", ENTRIES, overwrite=True)
    assert (folder / "mine.txt").read_text() == "keep"


def test_a_job_that_reuses_its_files_keeps_them_and_loses_only_a_writers_leftovers(tmp_path):
    kept = tmp_path / "value"
    entries = ("model.pt", "report.json")
    with claimed_folder(kept, "value report", entries, overwrite=False):
        place(kept, "model.pt", lambda p: p.write_bytes(b"weights"))
    (kept / ".model.pt.tmp-123").write_bytes(b"half")
    claim_folder(kept, "value report", entries, overwrite=False, keep=True)
    assert sorted(p.name for p in kept.iterdir()) == [MARKER, "model.pt"]
    (kept / ".model.pt.backup").write_bytes(b"mine")  # looks like a leftover, is a user's
    with pytest.raises(RefusedError, match=r"model\.pt\.backup"):
        claim_folder(kept, "value report", entries, overwrite=False, keep=True)
    assert (kept / ".model.pt.backup").read_bytes() == b"mine"
    finish_folder(kept)


def test_a_file_is_ours_by_its_sidecar_digest(tmp_path):
    png = tmp_path / "map.png"
    write_file(claim_file(png, "species plot", overwrite=False, suffixes=(".png",)), "species plot", _png)
    with pytest.raises(RefusedError, match="holds an earlier species plot; pass --overwrite"):
        claim_file(png, "species plot", overwrite=False)
    assert claim_file(png, "species plot", overwrite=True) == png
    png.write_bytes(png.read_bytes() + b"edited")  # the user's now
    with pytest.raises(RefusedError, match="not a species plot that geoplantnet wrote"):
        claim_file(png, "species plot", overwrite=True)
    with pytest.raises(InputError, match=r"\.png"):
        claim_file(tmp_path / "x.txt", "species plot", overwrite=True, suffixes=(".png",))
    with pytest.raises(InputError, match="is a folder"):
        claim_file(tmp_path, "species plot", overwrite=True, suffixes=(".png",))
    with pytest.raises(RuntimeError):  # an interrupted writer leaves nothing under the name
        write_file(tmp_path / "new.png", "species plot", lambda p: (_png(p), (_ for _ in ()).throw(RuntimeError())))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".map.png.geoplantnet.json", "map.png"]


def _png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))


def _refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_impact_never_deletes_a_users_report_in_out(tmp_path, capsys):
    # the probe: --out DIR holding only the user's own report.md; it was deleted and the run went on
    out = tmp_path / "study"
    out.mkdir()
    (out / "report.md").write_text("my notes on the quarry")
    base = ["--footprint", str(EXAMPLES / "footprint.geojson"), "--scenario", str(EXAMPLES / "sealed.yaml")]
    for extra in ([], ["--overwrite"]):
        line = _refused(capsys, ["impact", *base, "--out", str(out), *extra])
        assert str(out) in line and "geoplantnet did not write" in line
    assert _tree(out) == {"report.md": b"my notes on the quarry"}


def test_sdm_table_never_replaces_a_users_summary(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}')
    for extra in ([], ["--overwrite"]):
        argv = ["sdm-table", "--presence", "p.csv", "--background", "b.csv", "--out", str(out), *extra]
        line = _refused(capsys, argv)
        assert "geoplantnet did not write" in line
    assert _tree(out) == {"summary.json": b'{"mine": true}'}


def test_plot_and_predict_never_replace_a_users_file(tmp_path, capsys):
    mine = tmp_path / "mine.png"
    _png(mine)
    table = tmp_path / "mine.csv"
    table.write_text("id,p\n1,0.5\n")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        line = _refused(capsys, ["plot", "nowhere.zarr", "--species", "sp", "--out", str(mine), *extra])
        assert str(mine) in line and "not a species plot that geoplantnet wrote" in line
        points = tmp_path / "points.csv"
        argv = ["predict", "--model", "m.pt", "--points", str(points), "--out", str(table), *extra]
        line = _refused(capsys, argv)
        assert str(table) in line and "refusing to replace it" in line
    line = _refused(capsys, ["plot", "nowhere.zarr", "--species", "sp", "--out", str(tmp_path / "x.txt")])
    assert "x.txt" in line and ".png" in line
    line = _refused(capsys, ["plot", "nowhere.zarr", "--species", "sp", "--out", str(tmp_path)])
    assert "is a folder" in line
    assert _tree(tmp_path) == before


def test_simulate_and_run_never_touch_a_users_folder_or_quicklook(tmp_path, capsys):
    # a folder holding only a name the region uses: the region generator removed it before it read markers
    region = tmp_path / "region"
    (region / "environment").mkdir(parents=True)
    (region / "environment" / "dem.tif").write_bytes(b"my elevation model")
    line = _refused(capsys, ["simulate", "--out", str(region)])
    assert "geoplantnet did not write" in line
    assert _tree(region) == {"environment/dem.tif": b"my elevation model"}
    root = tmp_path / "out"
    root.mkdir()
    _png(root / "composites.png")
    before = _tree(root)
    line = _refused(capsys, ["run", "--set", f"store.root={root}", "--set", f"workdir={tmp_path / 'w'}"])
    assert "composites.png" in line
    assert _tree(root) == before


def test_simulate_replaces_a_region_of_other_settings_only_with_overwrite(tmp_path, capsys):
    region = tmp_path / "region"
    region.mkdir()
    (region / "region.json").write_text("{}")  # a finished region whose settings are not these
    (region / MARKER).write_text('{"kind": "virtual region", "complete": true}')
    line = _refused(capsys, ["simulate", "--out", str(region)])
    assert "holds an earlier virtual region; pass --overwrite" in line
    assert sorted(p.name for p in region.iterdir()) == [MARKER, "region.json"]


def test_a_report_on_object_storage_is_checked_first_and_published_whole(s3_server) -> None:
    """A report under an object-store root (pods share no disk): written in scratch, published when finished (its
    files, then the completion marker); the store's folder checked as a local one is, before any work."""
    import fsspec

    from geoplantnet.core.config import StoreConfig
    from geoplantnet.storage.outputs import claim_published_folder
    from geoplantnet.storage.workdir import COMPLETE, Workdir

    root = Workdir.of(f"s3://{s3_server.bucket}/reports", StoreConfig(storage_options=s3_server.storage_options))
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    folder = claim_published_folder(root, "impact/to-urban", "impact report", ENTRIES, overwrite=False)
    assert folder.is_dir() and not list(folder.iterdir())  # local scratch, nothing published before the work
    assert not fs.exists(f"{s3_server.bucket}/reports/impact/to-urban")
    with claimed_folder(folder, "impact report", ENTRIES, overwrite=False) as path:
        place_json(path, "summary.json", {"loss": 1.5})
        assert not root.complete("impact", "to-urban")
    assert root.complete("impact", "to-urban")  # claimed_folder finished the folder, which published it
    remote = f"{s3_server.bucket}/reports/impact/to-urban"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(remote, detail=False)) == [COMPLETE, MARKER, "summary.json"]
    # an earlier report: replaced only with --overwrite; a user's file there: refused always, and left as it was
    with pytest.raises(RefusedError, match="--overwrite"):
        claim_published_folder(root, "impact/to-urban", "impact report", ENTRIES, overwrite=False)
    again = claim_published_folder(root, "impact/to-urban", "impact report", ENTRIES, overwrite=True)
    with claimed_folder(again, "impact report", ENTRIES, overwrite=True) as path:
        place(path, "report.md", lambda p: p.write_text("# new"))  # no summary.json: the earlier one must go
    fs.invalidate_cache()  # this client listed the folder before the publication
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(remote, detail=False)) == [COMPLETE, MARKER, "report.md"]
    # a user's file named like a report's, without geoplantnet's marker: refused, with or without --overwrite
    fs.pipe_file(f"{s3_server.bucket}/reports/mine/summary.json", b"the user's")
    for overwrite in (False, True):
        with pytest.raises(RefusedError, match="did not write"):
            claim_published_folder(root, "mine", "impact report", ENTRIES, overwrite=overwrite)
    with pytest.raises(RefusedError, match="not a offset ranking"):  # another kind's output
        claim_published_folder(root, "impact/to-urban", "offset ranking", ("report.md",), overwrite=True)
    fs.pipe_file(f"{remote}/notes.txt", b"mine")
    with pytest.raises(RefusedError, match=r"notes\.txt"):
        claim_published_folder(root, "impact/to-urban", "impact report", ENTRIES, overwrite=True)
    assert fs.cat_file(f"{remote}/notes.txt") == b"mine"
