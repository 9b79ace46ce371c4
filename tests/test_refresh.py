"""``geoplantnet refresh`` on a small two-year virtual region, from the CLI: 2024, then 2025 killed mid-run (2024 stays
readable and byte-identical), rerun to completion; change maps equal the indicator differences judged by each
pixel's noise (coverage stratum x paired model spread);
the detection scores recomputed from the stores and the generator's true changes; a complete year reruns to
nothing; the run summary files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from geoplantnet.core.config import load_config
from geoplantnet.evaluation.changes import detection_scores
from geoplantnet.products.change_noise import coverage_stratum, paired_spread
from geoplantnet.storage.catalog import open_catalog
from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import run_cli
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "refresh.yaml"
STORES = ("species", "habitat", "indicators")

pytestmark = pytest.mark.slow


def _settings(tmp: Path, classifier: str) -> list[str]:
    return [
        *SMALL_REGION,
        "map.tile=16",
        "train.epochs=8",
        f"workdir={tmp / 'work'}",
        f"store.root={tmp / 'out'}",
        "indicators.block_size=500",
        "indicators.draws=8",
        f"refresh.habitat_model={classifier}",
    ]


def _command(settings: list[str], year: int, *extra: str) -> list[str]:
    sets = [a for s in settings for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "geoplantnet",
        "refresh",
        "--config",
        str(CONFIG),
        *sets,
        "--year",
        str(year),
        "--quiet",
        *extra,
    ]


def _run(settings: list[str], year: int, *extra: str, cluster: list[str]) -> dict:
    """The command run in this process, on the cluster the ``cluster`` overrides name (the session's)."""
    proc = run_cli(*_command([*settings, *cluster], year, *extra)[3:], cwd=ROOT)  # the arguments after -m geoplantnet
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _year_bytes(url: Path, variable: str, slot: int) -> dict[str, str]:
    """Hashes of the chunk files of one slot of a series variable."""
    folder = url / variable / "c" / str(slot)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory, shared_cluster_sets: list[str]) -> dict:
    tmp = tmp_path_factory.mktemp("refresh")
    from geoplantnet.sim.region import generate_region
    from geoplantnet.testing.fixtures import tiny_classifier

    base = load_config(CONFIG, _settings(tmp, "none"))
    manifest = generate_region(base, Path(base.workdir) / "region", progress=False)
    species = [f"sp{i + 1:04d}" for i in range(base.sim.n_species)]
    classifier = tiny_classifier(base, species, tmp / "classifier")
    settings = _settings(tmp, classifier)
    first = _run(settings, 2024, cluster=shared_cluster_sets)
    out = tmp / "out"
    before = {
        s: _year_bytes(out / f"{s}.zarr", v, 0)
        for s, v in (("species", "probability"), ("indicators", "richness_expected"))
    }
    # 2025 killed once its first species tile is written (one worker, one tile at a time: it cannot finish first)
    slow = [*settings, "cluster.n_workers=1", "map.max_in_flight=1"]
    proc = subprocess.Popen(
        _command(slow, 2025), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    markers = out / "species.zarr" / "_tiles"
    deadline = time.time() + 600
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if sum(1 for _ in markers.rglob("*.json")) > first["tiles"]:  # a 2025 tile is in
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.1)
    proc.wait(timeout=60)
    interrupted = {
        s: [int(y) for y in open_store(str(out / f"{s}.zarr"))["year"].values] for s in ("species", "indicators")
    }
    listed = {item.id for item in open_catalog(str(out)).get_items()}  # the killed year: not in the catalogue
    second = _run(settings, 2025, "--evaluate", cluster=shared_cluster_sets)
    return {
        "listed_when_killed": listed,
        "tmp": tmp,
        "out": out,
        "settings": settings,
        "first": first,
        "second": second,
        "killed": killed,
        "interrupted": interrupted,
        "before": before,
        "manifest": manifest,
    }


def test_each_complete_year_is_catalogued_with_links_to_what_it_was_made_from(series):
    """The runs publish each product's year as it completes (never the killed one), linked by the registry's
    ``requires`` to the same year's items."""
    assert (
        not [i for i in series["listed_when_killed"] if i.endswith("-2025")]
        and "species-2024" in (series["listed_when_killed"])
    )
    items = {item.id: item for item in open_catalog(str(series["out"])).get_items()}
    products = ("species", "habitat", "indicators", "changes")
    assert {f"{p}-{y}" for p in products for y in (2024, 2025)} - {"changes-2024"} <= set(items)
    links = {i: sorted(link.href for link in item.links if link.rel == "derived_from") for i, item in items.items()}
    assert links["habitat-2025"] == ["./species-2025.json"]
    assert links["indicators-2025"] == ["./habitat-2025.json", "./species-2025.json"]
    assert links["changes-2025"] == ["./indicators-2025.json"]
    assert items["indicators-2025"].properties["geoplantnet:year"] == 2025


def test_a_killed_year_leaves_earlier_years_intact_and_the_rerun_completes_it(series):
    assert series["killed"], "the 2025 refresh finished before it could be killed"
    assert series["interrupted"] == {"species": [2024], "indicators": [2024]}
    out = series["out"]
    for store in STORES:
        ds = open_store(str(out / f"{store}.zarr"))
        assert [int(y) for y in ds["year"].values] == [2024, 2025], store
    after = {
        s: _year_bytes(out / f"{s}.zarr", v, 0)
        for s, v in (("species", "probability"), ("indicators", "richness_expected"))
    }
    assert after == series["before"]  # not one chunk of 2024 rewritten
    assert series["second"]["steps"]["species"]["tiles_computed"] < series["second"]["tiles"]  # resumed


def test_change_maps_are_the_differences_and_their_per_pixel_noise(series):
    """Each pixel is judged by the noise of its coverage stratum (the seasons both years saw clear, recorded in
    species.zarr) times its paired model spread (both years' intervals); ``changed`` is the richness test."""
    out = series["out"]
    ind = open_store(str(out / "indicators.zarr"))
    clear = open_store(str(out / "species.zarr"), mask_and_scale=False)["clear_seasons"]
    ch = open_store(str(out / "changes.zarr"), mask_and_scale=False).sel(year=2025)
    change = series["second"]["change"]
    assert change["previous_year"] == 2024 and change["coverage"] and change["decides"] == ["richness_expected"]
    a, b = (ind.sel(year=y) for y in (2024, 2025))
    delta = b["richness_expected"].values - a["richness_expected"].values
    np.testing.assert_allclose(ch["richness_expected_change"].values, delta, atol=1e-5)
    c0, c1 = clear.sel(year=2024).values, clear.sel(year=2025).values
    np.testing.assert_array_equal(ch["seasons_compared"].values, c0 & c1)
    stratum = coverage_stratum(c0, c1)
    spread = paired_spread(
        (a["richness_lower"].values, a["richness_upper"].values),
        (b["richness_lower"].values, b["richness_upper"].values),
    )
    shift = np.full(delta.shape, change["shift"]["richness_expected"])
    noise = np.full(delta.shape, change["noise"]["richness_expected"])
    for label, fit in change["noise_by_coverage"]["richness_expected"].items():
        both, one = (int(w) for w in label.replace(" both,", "").replace(" one", "").split())
        shift[stratum == 16 * both + one], noise[stratum == 16 * both + one] = fit["shift"], fit["noise"]
    z = (delta - shift) / (noise * spread)
    flag = ch["richness_expected_change_flag"].values
    decided = np.abs(np.abs(z) - change["z"]) > 1e-3  # away from the bound, where float32 rounding cannot decide
    assert decided.mean() > 0.99
    assert ((flag == 1) == (z < -change["z"]))[decided].all() and ((flag == 2) == (z > change["z"]))[decided].all()
    np.testing.assert_array_equal(ch["changed"].values == 1, flag > 0)
    probability = ch["changed_probability"].values
    assert np.nanmin(probability) >= 0 and np.nanmax(probability) <= 1
    assert (probability[flag > 0] > 0.999).all()


def test_detection_is_scored_against_the_generators_true_changes(series):
    out = series["out"]
    truth = open_store(str(series["manifest"].truth_path("changes")))["change"].sel(year=2025).values
    changed = open_store(str(out / "changes.zarr"), mask_and_scale=False).sel(year=2025)["changed"].values
    scores = series["second"]["evaluation"]["change_detection"]
    again = detection_scores(changed, truth)
    for key in ("true_changed", "detected", "true_positive", "precision", "recall"):
        assert scores[key] == again[key] or (np.isnan(scores[key]) and np.isnan(again[key])), key
    assert scores["true_changed"] > 0 and set(scores["recall_by_kind"]) <= {"clearing", "built_up", "wetland_restored"}
    assert "richness_change" in scores
    ev = series["second"]["evaluation"]["indicators"]
    assert ev["richness"]["expected"]["pixels"] == 1600


def test_summary_files_and_a_complete_year_reruns_to_nothing(series, shared_cluster_sets):
    folder = series["out"] / "refresh" / "2025"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["year"] == 2025 and summary["area_km2"] == 4.0 and summary["habitat_maps"]
    assert "## Changes since 2024" in (folder / "report.md").read_text()
    assert (folder / "changes.png").read_bytes()[:4] == b"\x89PNG"
    again = _run(series["settings"], 2025, cluster=shared_cluster_sets)
    assert all(step["tiles_computed"] == 0 for step in again["steps"].values())
    raw = zarr.open_group(str(series["out"] / "indicators.zarr"), mode="r")
    assert sorted(json.loads(raw.attrs["geoplantnet_years"])) == ["2024", "2025"]


def _main(settings: list[str], year: int, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The command in this process (a refusal starts no cluster: no interpreter start-up to pay): status, stderr."""
    from geoplantnet.cli import main

    code = main(_command(settings, year)[3:])  # the arguments after ``python -m geoplantnet``
    return code, capsys.readouterr().err


def test_a_year_without_imagery_is_one_line(series, capsys):
    code, err = _main(series["settings"], 2031, capsys)
    assert code == 2 and "2031" in err.strip().splitlines()[-1]


def test_a_configured_classifier_that_is_not_there_is_one_line(tmp_path, capsys):
    settings = _settings(tmp_path, str(tmp_path / "no-classifier"))
    code, err = _main(settings, 2024, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "refresh.habitat_model" in last and "no-classifier" in last
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # refused before any work


def test_a_refresh_on_object_storage_publishes_its_summary_and_refuses_a_users_folder(
    series, s3_server, shared_cluster_sets, capsys
):
    """store.root on the S3 server (Kubernetes' CronJob has no shared disk): the year's series and its summary go to
    the bucket, the summary's files first and its completion marker last; a user's file where a summary would go is
    refused before any work."""
    import fsspec

    root = f"s3://{s3_server.bucket}/refresh-series"
    settings = [
        *(s for s in series["settings"] if not s.startswith("store.root=")),
        f"store.root={root}",
        f"store.storage_options={json.dumps(s3_server.storage_options)}",
    ]
    summary = _run(settings, 2024, cluster=shared_cluster_sets)
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    folder = f"{s3_server.bucket}/refresh-series/refresh/2024"
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
    assert names == [".geoplantnet-complete", ".geoplantnet.json", "changes.png", "report.md", "summary.json"]
    published = fs.cat_file(f"{folder}/summary.json")
    assert json.loads(published)["year"] == summary["year"] == 2024
    assert s3_server.secret.encode() not in published and s3_server.secret.encode() not in fs.cat_file(
        f"{folder}/report.md"
    )
    assert fs.exists(f"{s3_server.bucket}/refresh-series/species.zarr/zarr.json")

    fs.pipe_file(f"{s3_server.bucket}/refresh-series/refresh/2025/notes.txt", b"the user's")
    code, err = _main(settings, 2025, capsys)
    assert code == 2 and "notes.txt" in err.strip().splitlines()[-1]
    assert fs.cat_file(f"{s3_server.bucket}/refresh-series/refresh/2025/notes.txt") == b"the user's"
