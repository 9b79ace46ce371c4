"""``geoplantnet impact`` end to end on the small virtual region: a footprint (in lon/lat) changes land cover, the
affected tiles are predicted again with the map's model and the habitat classifier, and the report compares the
predicted change with the generator's truth under the same scenario. Far from the footprint nothing changes, to the
bit; refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geoplantnet.cli import main
from geoplantnet.core.config import load_config
from geoplantnet.jobs.inputs import virtual_scenario_truth
from geoplantnet.sim.region import RegionManifest
from geoplantnet.storage.store import open_store

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
SETTINGS = ["indicators.n_surveys=0", "impact.draws=3"]

pytestmark = pytest.mark.slow


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _footprint(cfg) -> tuple[shapely.Polygon, int, int]:
    """A 150 m square of one land-cover class away from the region's edges, and the commonest other class."""
    manifest = RegionManifest.load(Path(cfg.workdir) / "region")
    with rasterio.open(manifest.root / "environment" / "land_cover.tif") as src:
        lc, t = src.read(1), src.transform
    k, best = 15, None
    for i in range(40, lc.shape[0] - k - 40, 5):
        for j in range(40, lc.shape[1] - k - 40, 5):
            values, counts = np.unique(lc[i : i + k, j : j + k], return_counts=True)
            if counts.max() == k * k and values[0] != 1 and (best is None or values[0] in (4, 5)):
                best = (i, j, int(values[0]))
    assert best is not None, "no homogeneous square in the small region"
    i, j, cls = best
    classes, counts = np.unique(lc[lc != cls], return_counts=True)
    target = int(classes[np.argmax(counts)])
    x0, y0 = t.c + j * t.a, t.f + i * t.e
    return shapely.box(x0, y0 - k * 10, x0 + k * 10, y0), cls, target


@pytest.fixture(scope="module")
def assessed(small_map, small_habitats, tmp_path_factory):
    root = tmp_path_factory.mktemp("impact")
    overrides = [*small_habitats.overrides, *SETTINGS]
    cfg = load_config(CONFIG, overrides)
    square, source, target = _footprint(cfg)
    gpd.GeoDataFrame({"name": ["project"]}, geometry=[square], crs=3035).to_crs(4326).to_file(
        root / "footprint.geojson", driver="GeoJSON"
    )
    (root / "scenario.yaml").write_text(f"name: test-project\nland_cover: {target}\nbuffer_m: 60\nedge_strength: 0.3\n")
    out = root / "report"
    args = ["impact", "--config", str(CONFIG), *_sets(overrides), "--quiet", "--evaluate"]
    args += ["--footprint", str(root / "footprint.geojson"), "--scenario", str(root / "scenario.yaml")]
    args += ["--model", small_map.model, "--habitat-model", small_habitats.model, "--out", str(out)]
    assert main(args) == 0
    return {"root": root, "out": out, "args": args, "cfg": cfg, "square": square, "source": source, "target": target}


def test_the_report_is_whole(assessed):
    out = assessed["out"]
    assert sorted(p.name for p in out.iterdir()) == ["impact.gpkg", "maps.png", "report.md", "summary.json"]
    assert (out / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"]["land_cover"] == assessed["target"]
    assert summary["zones"]["footprint"]["area_ha"] == pytest.approx(2.25, abs=0.6)  # 150 m x 150 m on 50 m cells
    text = (out / "report.md").read_text()
    assert "Against the virtual region's truth" in text and "richness_expected" in text
    layers = {name for name, _ in gpd.list_layers(out / "impact.gpkg").values}
    assert layers == {"footprint", "zones", "cells"}
    cells = gpd.read_file(out / "impact.gpkg", layer="cells")
    assert {"richness_expected_change", "richness_change_sd", "habitat_before", "habitat_after"} <= set(cells.columns)
    assert cells.crs.to_epsg() == 3035


def test_far_from_the_footprint_nothing_changes(assessed):
    """Pixels beyond the buffer and the model's receptive field are predicted from unchanged inputs: to the bit."""
    out = assessed["out"]
    summary = json.loads((out / "summary.json").read_text())
    cells = gpd.read_file(out / "impact.gpkg", layer="cells")
    distance = cells.geometry.centroid.distance(assessed["square"])
    far = distance > 60 + summary["reach_m"] + 50
    assert far.sum() > 50
    assert (cells.loc[far, "richness_expected_change"] == 0).all()
    near = distance <= 25
    assert (cells.loc[near, "richness_expected_change"] != 0).mean() > 0.8


def test_predicted_against_true_change(assessed):
    """The truth under the scenario, recomputed here from the generator, is what the report compares with; the
    model's change inside the footprint moves with the true change."""
    cfg, out = assessed["cfg"], assessed["out"]
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["evaluation"]
    cells = gpd.read_file(out / "impact.gpkg", layer="cells")
    grid = cfg.grid.grid()
    inside = shapely.contains_xy(assessed["square"], grid.x[None, :], grid.y[:, None])
    before, after, _ = virtual_scenario_truth(cfg, grid, inside, assessed["target"])
    true_change = float((after.richness - before.richness)[inside].mean())
    assert ev["zones"]["footprint"]["richness_change_true"] == pytest.approx(true_change, rel=1e-4)
    # the generator's "before" is its stored truth
    truth = open_store(str(RegionManifest.load(Path(cfg.workdir) / "region").truth_path("indicators")))
    assert np.allclose(before.richness, truth["richness_expected"].values, atol=1e-4)
    assert (after.richness[~inside] == before.richness[~inside]).all()
    predicted = ev["zones"]["footprint"]["richness_change_predicted"]
    foot = cells[cells.zone == "footprint"]
    assert predicted == pytest.approx(float(foot.richness_expected_change.mean()), abs=1e-3)
    assert np.sign(predicted) == np.sign(true_change) or abs(true_change) < 0.5
    assert ev["pixel_r"]["richness"] > 0.3


def test_refusals_are_one_line(assessed, tmp_path, capsys):
    args = assessed["args"]
    # an earlier report is replaced only when asked
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err.strip().splitlines()[-1]
    # a user's folder at --out is never written into
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    out_at = args.index("--out") + 1
    assert main([*args[:out_at], str(user), *args[out_at + 1 :]]) == 2
    assert "notes.txt" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    # a footprint outside the region, a class the land cover does not have, a missing scenario
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 100, 100)], crs=3035).to_file(far, driver="GeoJSON")
    fp_at = args.index("--footprint") + 1
    sc_at = args.index("--scenario") + 1
    new_out = [*args[:out_at], str(tmp_path / "r"), *args[out_at + 1 :]]
    assert main([*new_out[:fp_at], str(far), *new_out[fp_at + 1 :]]) == 2
    assert "does not overlap the region" in capsys.readouterr().err.strip().splitlines()[-1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nland_cover: lava\n")
    assert main([*new_out[:sc_at], str(bad), *new_out[sc_at + 1 :]]) == 2
    assert "'lava' is not a class" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*new_out[:sc_at], str(tmp_path / "none.yaml"), *new_out[sc_at + 1 :]]) == 2
    assert "none.yaml: no such file" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()
