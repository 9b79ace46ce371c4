"""``geoplantnet value`` end to end on the small virtual region (U-Net vs forest vs their blend per fold, the
shipped blend, value.zarr, the 50 m aggregate, resume, the truth agreement) and its one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import zarr
from shapely.geometry import box

from geoplantnet.cli import main
from geoplantnet.core.encoding import NODATA
from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import cli_sets
from geoplantnet.testing.fixtures import copy_region
from geoplantnet.testing.regions import SMALL_REGION

CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "default.yaml"
TINY = [
    "value.tile=120",  # 200 x 200 pixels at 10 m: 2 x 2 tiles, the last clipped; 24-pixel tiles of the 50 m aggregate
    "value.folds=3",
    "value.block_size_m=500",
    "value.epochs=3",
    "value.patience=2",  # early stopping on a spatial fifth of the training polygons (off by default)
    "value.crop=32",
    "value.base_channels=4",
    "value.draws=2",
    "value.score_column=condition",  # the score target (the virtual polygons' simulated survey), end to end
    "value.forest_trees=20",
    "value.pixels_per_polygon=50",
    "value.model=blend",  # the shipped model: the U-Net and the forest blended, the weight chosen on the inner split
]


def _args(tmp: Path, *extra: str) -> list[str]:
    sets = [*SMALL_REGION, *TINY, f"workdir={tmp / 'work'}", f"store.root={tmp / 'out'}"]
    return ["value", "--config", str(CONFIG), *[a for s in sets for a in ("--set", s)], "--quiet", *extra]


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_value_end_to_end_resumes_and_evaluates(
    small_region: Path, tmp_path: Path, capsys, shared_cluster_sets: list[str]
) -> None:
    copy_region(small_region, tmp_path / "work")
    cluster = cli_sets(shared_cluster_sets)  # the session's cluster
    code, out, err = _run(_args(tmp_path, "--evaluate", *cluster), capsys)
    assert code == 0, err
    report = json.loads(out)
    saved = json.loads((tmp_path / "out" / "value" / "report.json").read_text())
    assert saved["folds"] == report["folds"] and (tmp_path / "out" / "value" / "report.md").exists()
    # both models and their blend on every fold, scored on the same held-out pixels
    for k in range(3):
        rows = {r["model"]: r for r in report["folds"] if r["fold"] == k}
        assert set(rows) == {"unet", "random_forest", "blend"}
        assert rows["unet"]["test_pixels"] == rows["random_forest"]["test_pixels"] == rows["blend"]["test_pixels"] > 0
        assert rows["blend"]["unet_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        for r in rows.values():
            assert 0 <= r["accuracy"] <= 1 and (r["auc"] is None or 0 <= r["auc"] <= 1)
    scored = [r for r in report["folds"] if r["auc"] is not None]
    assert {r["model"] for r in scored} == {"unet", "random_forest", "blend"}
    assert set(report["means"]) == {"unet", "random_forest", "blend"}
    assert "| blend |" in (tmp_path / "out" / "value" / "report.md").read_text()
    # the shipped model: the blend, its forest beside the U-Net, its weight chosen on the inner split
    shipped = report["final_model"]["shipped"]
    assert report["shipped"] == shipped["model"] == "blend" and report["unet_weight"] == shipped["unet_weight"]
    assert (tmp_path / "out" / "value" / "forest" / "geoplantnet.json").exists()
    final = report["final_model"]
    assert final["polygons"] + final["validation_polygons"] == report["polygons"]["high"] + report["polygons"]["low"]
    assert final["validation_polygons"] > 0 and 1 <= final["best_epoch"] <= final["epochs"] <= 3
    # the 10 m map: complete, every pixel a value in [0, 1] with its MC-dropout spread
    value = open_store(str(tmp_path / "out" / "value.zarr"))
    assert value["biodiversity_value"].shape == (200, 200)
    v = value["biodiversity_value"].values
    assert np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1 and v.std() > 0
    assert np.isfinite(value["biodiversity_value_sd"].values).all()
    assert value["biodiversity_value"].attrs["model_versions"].startswith("value-blend/")
    assert value.attrs["value_model"] == "blend" and value.attrs["value_unet_weight"] == shipped["unet_weight"]
    # the polygons' (simulated survey) condition score learnt: the store says how to read the value back
    assert value.attrs["value_target"] == "score" and value.attrs["value_score_column"] == "condition"
    assert value.attrs["value_score_at_0"] < value.attrs["value_score_at_1"]
    assert report["meaning"]["value_target"] == "score"
    # the 50 m aggregate: the mean of the 25 stored 10 m values of each cell (one uint8 step)
    agg = open_store(str(tmp_path / "out" / "value_50m.zarr"))
    cells = v.reshape(40, 5, 40, 5)
    np.testing.assert_allclose(agg["biodiversity_value"].values, cells.mean(axis=(1, 3)), atol=0.5 / 254 + 1e-6)
    np.testing.assert_allclose(agg["biodiversity_value_sd"].values, cells.std(axis=(1, 3)), atol=0.5 / 254 + 1e-6)
    ev = report["evaluation"]
    # a 3-epoch network of 4 channels may map one value everywhere (then no rank correlation: None, not NaN)
    assert ev["pixels"] == 1600 and 0 <= ev["top_bottom_auc"] <= 1
    for key in ("spearman_r", "spearman_r_outside_training", "pearson_r_outside_training"):
        assert ev[key] is None or -1 <= ev[key] <= 1
    assert ev["top_pixels"] > 0 and ev["bottom_pixels"] > 0 and ev["excluded_training_pixels"] > 0
    # a rerun: the model and folds reused, both stores resumed to nothing, the values unchanged
    code, out, err = _run(_args(tmp_path, *cluster), capsys)
    assert code == 0, err
    again = json.loads(out)
    assert again["model_reused"] and again["model_sha256"] == report["model_sha256"]
    assert [m["tiles_computed"] for m in again["maps"].values()] == [0, 0]
    raw = zarr.open_group(str(tmp_path / "out" / "value.zarr"), mode="r")["biodiversity_value"][:]
    assert (raw != NODATA).all()
    np.testing.assert_array_equal(open_store(str(tmp_path / "out" / "value.zarr"))["biodiversity_value"].values, v)
    # a model of other settings is never replaced unasked (and nothing else is touched)
    model = tmp_path / "out" / "value" / "model.pt"
    before = model.read_bytes()
    code, _, err = _run([*_args(tmp_path, *cluster), "--set", "value.epochs=4"], capsys)
    assert code == 2 and "pass --overwrite" in err.strip().splitlines()[-1]
    assert model.read_bytes() == before and (tmp_path / "out" / "value" / "report.json").exists()


def _polygon_file(tmp: Path) -> Path:
    """Two labelled sites in lon/lat GeoJSON."""
    left, top = 4_321_000, 2_981_000
    frame = gpd.GeoDataFrame(
        {"value": ["high", "low"], "site": ["a", "b"]},
        geometry=[
            box(left + 100, top - 500, left + 400, top - 200),
            box(left + 900, top - 900, left + 1200, top - 600),
        ],
        crs=3035,
    )
    path = tmp / "sites.geojson"
    frame.to_crs(4326).to_file(path, driver="GeoJSON")
    return path


def test_value_refusals_are_one_line(tmp_path: Path, capsys) -> None:
    polygons = _polygon_file(tmp_path)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    cases = [
        (["--polygons", str(tmp_path / "nowhere.gpkg")], "no such file"),
        (["--polygons", str(polygons), "--label-column", "quality"], "no label column 'quality'"),
        (["--polygons", str(polygons), "--set", "value.high=excellent"], "holds no 'excellent'"),
        (["--polygons", str(polygons), "--out", str(user)], "not a geoplantnet store"),
        (["--polygons", str(polygons), "--evaluate", "--set", "inputs.sentinel2=true"], "the virtual region's truth"),
        (["--set", "inputs.sentinel2=true"], "value needs labelled polygons"),
    ]
    for extra, expected in cases:
        code, _, err = _run(_args(tmp_path, *extra), capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("geoplantnet: error:") and expected in last, err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"] and (user / "notes.txt").read_text() == "keep me"
    # refused before any work: no region generated, nothing written under the store root
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
    # a report folder holding a user's file is not written into
    (tmp_path / "out" / "value").mkdir(parents=True)
    (tmp_path / "out" / "value" / "draft.md").write_text("mine")
    code, _, err = _run(_args(tmp_path, "--polygons", str(polygons)), capsys)
    assert code == 2 and "geoplantnet did not write" in err.strip().splitlines()[-1]
    assert [p.name for p in (tmp_path / "out" / "value").iterdir()] == ["draft.md"]
