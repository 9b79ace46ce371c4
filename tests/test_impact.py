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
import shapely.affinity

from geoplantnet.cli import main
from geoplantnet.core.config import load_config
from geoplantnet.products.offsets import Currency
from geoplantnet.runs.inputs import virtual_scenario_truth
from geoplantnet.sim.region import RegionManifest
from geoplantnet.storage.outputs import MARKER, owned_folder
from geoplantnet.storage.store import open_store

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
SETTINGS = ["indicators.n_surveys=60", "impact.draws=3", "impact.min_class_surveys=5"]
VALUE = [  # a tiny U-Net: 2 x 2 tiles of 120 pixels at 10 m
    "value.tile=120",
    "value.folds=2",
    "value.epochs=3",
    "value.crop=32",
    "value.base_channels=4",
    "value.draws=0",
    "value.forest_trees=10",
    "value.pixels_per_polygon=30",
]

pytestmark = pytest.mark.slow


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _land_cover(cfg) -> tuple[np.ndarray, object]:
    manifest = RegionManifest.load(Path(cfg.workdir) / "region")
    with rasterio.open(manifest.root / "environment" / "land_cover.tif") as src:
        return src.read(1), src.transform


def _squares(lc: np.ndarray, t: object, k: int, classes: set[int], n: int) -> list[tuple[shapely.Polygon, int]]:
    """Up to ``n`` non-overlapping squares of ``k`` x 10 m, each of one land-cover class in ``classes``, away from
    the region's edges (forest first)."""
    found: list[tuple[int, int, int]] = []
    for i in range(40, lc.shape[0] - k - 40, 5):
        for j in range(40, lc.shape[1] - k - 40, 5):
            values = np.unique(lc[i : i + k, j : j + k])
            apart = all(abs(i - a) > k + 10 or abs(j - b) > k + 10 for a, b, _ in found)
            if len(values) == 1 and int(values[0]) in classes and apart:
                found.append((i, j, int(values[0])))
    found.sort(key=lambda f: f[2] not in (4, 5))
    return [
        (shapely.box(t.c + j * 10, t.f - (i + k) * 10, t.c + (j + k) * 10, t.f - i * 10), c) for i, j, c in found[:n]
    ]


def _footprint(cfg) -> tuple[shapely.Polygon, int, int]:
    """A 150 m square of one land-cover class away from the region's edges, and the commonest other class."""
    lc, t = _land_cover(cfg)
    squares = _squares(lc, t, 15, set(range(2, 10)), 1)
    assert squares, "no homogeneous square in the small region"
    square, cls = squares[0]
    classes, counts = np.unique(lc[lc != cls], return_counts=True)
    return square, cls, int(classes[np.argmax(counts)])


@pytest.fixture(scope="module")
def value_model(small_map, tmp_path_factory, shared_cluster_sets) -> str:
    """A tiny value model trained by ``geoplantnet value`` on the small region (its maps written beside it, by the
    session's cluster)."""
    root = tmp_path_factory.mktemp("value")
    sets = _sets([*small_map.overrides, *VALUE, f"store.root={root}", *shared_cluster_sets])
    args = ["value", "--config", str(CONFIG), *sets, "--quiet"]
    assert main(args) == 0
    return str(root / "value" / "model.pt")


@pytest.fixture(scope="module")
def assessed(small_map, small_habitats, value_model, tmp_path_factory, shared_cluster_sets):
    root = tmp_path_factory.mktemp("impact")
    overrides = [*small_habitats.overrides, *SETTINGS, f"impact.value_model={value_model}"]
    cfg = load_config(CONFIG, overrides)
    square, source, target = _footprint(cfg)
    gpd.GeoDataFrame({"name": ["project"]}, geometry=[square], crs=3035).to_crs(4326).to_file(
        root / "footprint.geojson", driver="GeoJSON"
    )
    (root / "scenario.yaml").write_text(f"name: test-project\nland_cover: {target}\nbuffer_m: 60\nedge_strength: 0.3\n")
    out = root / "report"
    base = ["--config", str(CONFIG), *_sets([*overrides, *shared_cluster_sets]), "--quiet"]  # the session's cluster
    models = ["--model", small_map.model, "--habitat-model", small_habitats.model]
    args = ["impact", *base, "--evaluate", *models, "--out", str(out)]
    args += ["--footprint", str(root / "footprint.geojson"), "--scenario", str(root / "scenario.yaml")]
    assert main(args) == 0
    return {"out": out, "args": args, "base": base, "models": models, "cfg": cfg, "square": square, "source": source,
            "target": target}  # fmt: skip


def test_the_report_is_whole(assessed):
    out = assessed["out"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "impact.gpkg", "maps.png", "report.md", "summary.json"]
    assert owned_folder(out, "impact report")  # marked finished
    assert (out / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"]["land_cover"] == assessed["target"]
    assert summary["zones"]["footprint"]["area_ha"] == pytest.approx(2.25, abs=0.6)  # 150 m x 150 m on 50 m cells
    text = (out / "report.md").read_text()
    assert "Against the virtual region's truth" in text and "richness_expected" in text
    layers = {name for name, _ in gpd.list_layers(out / "impact.gpkg").values}
    assert layers == {"footprint", "zones", "cells"}
    cells = gpd.read_file(out / "impact.gpkg", layer="cells")
    columns = {"richness_expected_change", "richness_change_sd", "value_change", "value_change_sd", "habitat_after"}
    assert columns <= set(cells.columns)
    foot = summary["value"]["footprint"]
    assert foot["value_ha_change_lower"] <= foot["value_ha_change_upper"] and len(foot["value_ha_change_draws"]) == 3
    assert "value_change_predicted" in summary["evaluation"]["zones"]["footprint"]
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
    assert (cells.loc[far, "value_change"] == 0).all()
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
    model = ev["zones"]["footprint"]["richness_change_model"]
    foot = cells[cells.zone == "footprint"]
    assert model == pytest.approx(float(foot.richness_expected_change.mean()), abs=1e-3)
    assert np.sign(model) == np.sign(true_change) or abs(true_change) < 0.5
    # the estimate: the models' change corrected by their error per land-cover class, measured at the surveys
    est = summary["change_estimates"]["richness"]
    fp = est["footprint"]
    assert ev["zones"]["footprint"]["richness_change_predicted"] == pytest.approx(fp["change"])
    assert fp["change"] == pytest.approx(fp["model_change"] + fp["correction"])
    assert fp["lower"] <= fp["change"] <= fp["upper"]
    for zone in ("buffer", "surroundings"):  # no class changes there: nothing is corrected, nothing added
        assert est[zone]["correction"] == 0.0 and est[zone]["sd_calibration"] == 0.0
    check = summary["extrapolation"]
    assert check["class"] == assessed["target"] and check["measured"] == (check["surveys"] >= 5)
    assert summary["survey_errors"]["richness"]  # measured per class
    assert "with the models' error" in (out / "report.md").read_text()
    assert ev["pixel_r"]["richness"] > 0  # a tiny model on a tiny region: the demo measures the real agreement


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


@pytest.fixture(scope="module")
def ranked(assessed, tmp_path_factory):
    """``geoplantnet offsets``: three candidate sites (EPSG:3035 GeoPackage) restored to the footprint's former
    class, ranked against the impact's value loss."""
    root = tmp_path_factory.mktemp("offsets")
    cfg, source = assessed["cfg"], assessed["source"]
    lc, t = _land_cover(cfg)
    sites = [
        sq for sq in _squares(lc, t, 10, set(range(2, 10)) - {source}, 8) if not sq[0].intersects(assessed["square"])
    ]
    assert len(sites) >= 3, "too few candidate sites in the small region"
    frame = gpd.GeoDataFrame({"id": [f"site-{i}" for i in range(3)]}, geometry=[g for g, _ in sites[:3]], crs=3035)
    frame.to_file(root / "sites.gpkg", driver="GPKG")
    (root / "restore.yaml").write_text(f"name: restore\nland_cover: {source}\nbuffer_m: 30\n")
    out = root / "report"
    args = ["offsets", *assessed["base"], *assessed["models"][:2], "--evaluate", "--out", str(out)]  # no classifier
    args += [
        "--sites",
        str(root / "sites.gpkg"),
        "--scenario",
        str(root / "restore.yaml"),
        "--impact",
        str(assessed["out"]),
    ]
    assert main(args) == 0
    return {"out": out, "args": args, "root": root}


def test_offsets_rank_sites_and_judge_no_net_loss(assessed, ranked):
    out = ranked["out"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "offsets.csv", "offsets.gpkg", "report.md", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    ranking = summary["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    gains = [r["gain"] for r in ranking]
    assert gains == sorted(gains, reverse=True)
    # the currency (species-ha by default): the same on both sides, from the impact's species-ha draws
    assert summary["currency"]["unit"] == "species-ha" and {r["unit"] for r in ranking} == {"species-ha"}
    impact = json.loads((assessed["out"] / "summary.json").read_text())
    point, drawn = Currency("species").change(impact)
    loss = -drawn
    assert summary["impact"]["loss"] == pytest.approx(-point)
    assert summary["impact"]["value_ha_loss"] == pytest.approx(
        -sum(r["value_ha_change"] for r in impact["value"].values())
    )
    assert summary["impact"]["draws_paired"]  # the same models, seeds and draws: draw k is one network in both
    for r in ranking:
        p = float((np.asarray(r["gain_draws"]) >= loss).mean())
        assert r["p_no_net_loss"] == pytest.approx(p)
        assert r["compensates"] == ("yes" if p >= 0.9 else "no" if p <= 0.1 else "uncertain")
    chosen = summary["impact"]["portfolio"]["sites"]
    assert chosen == [r["site"] for r in ranking if r["gain"] > 0][: len(chosen)]
    assert set(summary["evaluation"]) >= {"spearman_rank", "true_best_site", "predicted_best_site"}
    assert all(np.isfinite(r["true_value_score_gain"]) for r in ranking)
    # the truth's own verdict: value-score x hectares lost by the impact against those gained at the chosen sites
    ev, zones = summary["evaluation"], impact["evaluation"]["zones"]
    true_loss = -sum(zones[z]["value_score_change_true"] * impact["zones"][z]["area_ha"] for z in zones)
    assert ev["true_value_score_loss"] == pytest.approx(true_loss)
    gain = sum(r["true_value_score_gain"] for r in ranking if r["site"] in chosen)
    assert ev["true_compensates"] == ("no loss to offset" if true_loss <= 0 else "yes" if gain >= true_loss else "no")
    table = gpd.read_file(out / "offsets.gpkg", layer="sites")
    assert sorted(table["site"]) == ["site-0", "site-1", "site-2"] and table.crs.to_epsg() == 3035
    assert "P(no net loss)" in (out / "report.md").read_text()


def test_offsets_refusals_are_one_line(assessed, ranked, tmp_path, capsys):
    args = ranked["args"]
    at = args.index("--out") + 1
    fresh = [*args[:at], str(tmp_path / "r"), *args[at + 1 :]]
    # no value model: nothing to rank by
    at = fresh.index(next(a for a in fresh if a.startswith("impact.value_model=")))
    no_value = [*fresh[: at - 1], *fresh[at + 1 :], "--set", f"store.root={tmp_path / 'empty'}"]
    no_value += ["--set", "impact.offset_currency=value"]  # the species currency needs no value model
    assert main(no_value) == 2
    assert "run `geoplantnet value` first" in capsys.readouterr().err.strip().splitlines()[-1]
    # an impact report that is not one
    at = fresh.index("--impact") + 1
    assert main([*fresh[:at], str(tmp_path), *fresh[at + 1 :]]) == 2
    assert "no summary.json" in capsys.readouterr().err.strip().splitlines()[-1]
    # duplicate site ids
    dup = tmp_path / "dup.geojson"
    gpd.GeoDataFrame({"id": ["a", "a"]}, geometry=[assessed["square"]] * 2, crs=3035).to_file(dup, driver="GeoJSON")
    at = fresh.index("--sites") + 1
    assert main([*fresh[:at], str(dup), *fresh[at + 1 :]]) == 2
    assert "not unique" in capsys.readouterr().err.strip().splitlines()[-1]
    # overlapping sites: their gains would count twice
    both = tmp_path / "both.geojson"
    shifted = shapely.affinity.translate(assessed["square"], 50, 0)
    gpd.GeoDataFrame({"id": ["a", "b"]}, geometry=[assessed["square"], shifted], crs=3035).to_file(
        both, driver="GeoJSON"
    )
    assert main([*fresh[:at], str(both), *fresh[at + 1 :]]) == 2
    assert "a and b overlap" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()


def test_random_footprints_and_site_sets_against_the_truth(assessed, tmp_path, capsys):
    """``impact --random N --evaluate``: random footprints and site sets assessed on one plan and scored against the
    truth, at a tiny size; bad input is one line before anything starts."""
    base, models = assessed["base"], assessed["models"]
    (tmp_path / "restore.yaml").write_text(f"name: restore\nland_cover: {assessed['source']}\nbuffer_m: 30\n")
    (tmp_path / "seal.yaml").write_text(f"name: seal\nland_cover: {assessed['target']}\nbuffer_m: 60\n")
    out = tmp_path / "random"
    seal, restore = str(tmp_path / "seal.yaml"), str(tmp_path / "restore.yaml")
    # two footprint scenarios (mixed classes) and a restoration for the site sets, in one run
    args = ["impact", *base, *models, "--random", "2", "--scenario", seal, "--scenario", restore, "--evaluate"]
    args += ["--offset-scenario", restore, "--sites-per-set", "3", "--out", str(out)]
    # refusals: without --evaluate, with a footprint too, too few sites to rank, not the virtual region
    for bad, says in (
        ([a for a in args if a != "--evaluate"], "add --evaluate"),
        ([*args, "--footprint", "f.geojson"], "drop --footprint"),
        ([*args, "--sites-per-set", "2"], "at least 3 sites"),
        ([*args, "--set", "inputs.rasters=[x.tif]"], "inputs.* are set"),
        ([*args, "--scenario", seal], "at least one footprint per scenario"),
        (["impact", *base, *models, "--footprint", "f.geojson", "--scenario", "a.yaml", "--scenario", "b.yaml"],
         "one --scenario"),
    ):  # fmt: skip
        assert main(bad) == 2
        assert says in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "report.md", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert [f["id"] for f in summary["footprints"]] == ["footprint-1", "footprint-2"]
    assert len(summary["sites"]) == 6 and len(summary["site_sets"]) == 2
    # each footprint becomes a class other than its own majority class
    assert {s["name"] for s in summary["scenarios"]} <= {"seal", "restore"}
    assert sum(s["footprints"] for s in summary["scenarios"]) == 2
    for f in summary["footprints"]:
        assert f["scenario"] in ("seal", "restore") and f["majority_land_cover"] != f["new_land_cover"]
    agg = summary["aggregate"]
    assert agg["footprints"] == 2 and agg["site_sets"] == 2
    for f in summary["footprints"]:
        assert np.isfinite(f["richness_change_true"]) and f["richness_true_in_interval"] in (True, False)
    for s in summary["site_sets"]:
        assert len(s["sites"]) == 3 and s["verdict_true"] in ("yes", "no", "no loss to offset")
        assert s["verdict_agrees"] == (s["verdict_predicted"] == s["verdict_true"])
    assert agg["verdicts_agree_share"] == np.mean([s["verdict_agrees"] for s in summary["site_sets"]])
    report = (out / "report.md").read_text()
    assert "Spearman of predicted and true gains" in report and "Footprints" in report
    # (the same seed draws the same polygons: test_random_assessments, without a second run here)
