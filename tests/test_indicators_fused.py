"""``geoplantnet indicators --from-model`` (fused: species predicted and habitats classified inside the indicator tile
task) against the two-pass mode on the small virtual region: the same values at the surveys, the same radii, the
same indicator maps; the store says which mode made it; one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoplantnet.cli import main
from geoplantnet.core.config import ClusterConfig, load_config
from geoplantnet.products.indicators.tiles import FusedTileJob, IndicatorTileJob
from geoplantnet.runs.indicators import (
    fused_setup,
    open_stores,
    plan_fused_indicators,
    plan_indicators,
    produce_indicators,
    sample_model,
)
from geoplantnet.runs.inputs import indicator_inputs
from geoplantnet.runtime.cluster import connect
from geoplantnet.storage.store import COMPLETE, open_store
from geoplantnet.testing.cli import run_cli
from geoplantnet.validation.conformal import sample_maps

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
SETTINGS = ["indicators.block_size=500", "indicators.n_surveys=400", "indicators.draws=16"]

pytestmark = pytest.mark.slow


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


@pytest.fixture(scope="module")
def both(small_map, small_habitats, dask_address):
    """The two-pass plan and store (from the session's species and habitat maps) and the fused ones (the same model
    and classifier), on the session's cluster; and both samplings of the surveys."""
    cfg = load_config(CONFIG, [*small_habitats.overrides, *SETTINGS])
    tables = indicator_inputs(cfg)
    root = small_map.root / "fused"
    root.mkdir(exist_ok=True)
    with connect(ClusterConfig(kind="address", address=dask_address)) as client:
        stores = open_stores(cfg, small_map.reference, small_habitats.store, str(root / "two.zarr"))
        two = plan_indicators(cfg, stores, tables)
        produce_indicators(client, cfg, two, progress=False)
        setup = fused_setup(cfg, small_map.model, small_map.sources, small_habitats.model, tables)
        fused = plan_fused_indicators(client, cfg, setup, str(root / "fused.zarr"))
        summary = produce_indicators(client, cfg, fused, progress=False)
        assert isinstance(fused.job, FusedTileJob) and isinstance(two.job, IndicatorTileJob)
        from_model = sample_model(client, fused.job.fused, fused.grid, fused.tile, tables.surveys)
    codes = open_store(small_map.reference, mask_and_scale=False)
    habitat_codes = open_store(small_habitats.store, mask_and_scale=False)
    from_stores = sample_maps(codes, habitat_codes, two.grid, tables.surveys)
    return two, fused, summary, from_stores, from_model


def test_survey_values_are_the_maps(both):
    *_, from_stores, from_model = both
    for a, b in zip(from_stores, from_model, strict=True):
        np.testing.assert_array_equal(a, b)
    assert from_stores[3].sum() >= 300


def test_calibration_radii_are_equal(both):
    two, fused, *_ = both
    assert fused.calibration.count_radius == two.calibration.count_radius
    assert fused.calibration.habitat_radius == two.calibration.habitat_radius
    assert fused.calibration.surveys == two.calibration.surveys >= 150  # half: the other half recalibrates
    assert fused.parts["calibration"] == two.parts["calibration"]


def test_fused_store_equals_the_two_pass_store(both):
    two, fused, summary, *_ = both
    a, b = open_store(two.job.output.url), open_store(fused.job.output.url)
    assert b.attrs[COMPLETE] == "true" and summary.tiles == summary.tiles_computed == 9
    assert set(a.data_vars) == set(b.data_vars) and "ecosystem_health" in b
    for name in a.data_vars:  # identical, not close: both compute from the same uint8 codes
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_the_store_says_which_mode_made_it(both, small_map):
    two, fused, *_ = both
    a, b = open_store(two.job.output.url), open_store(fused.job.output.url)
    assert a.attrs["indicator_source"].startswith("store") and b.attrs["indicator_source"].startswith("model")
    assert two.job.model.source == "store" and fused.job.model.source == "model"
    assert two.parts["source"].startswith("store ") and fused.parts["source"].startswith("model ")
    assert b.attrs["species_store"] == "none" and b.attrs["habitat_store"] == "none"
    assert b.attrs["species_model_version"] == open_store(small_map.reference).attrs["model_version"]
    assert b.attrs["habitat_model_version"] == a.attrs["habitat_model_version"]
    assert a.attrs["geoplantnet_run"] != b.attrs["geoplantnet_run"]
    assert not (Path(fused.job.output.url).parent / "species.zarr").exists()


def test_cli_from_model_resumes_to_nothing(small_map, small_habitats, shared_cluster_sets):
    out = small_map.root / "fused" / "cli.zarr"
    cmd = ["indicators", "--config", str(CONFIG)]
    cmd += [*_sets([*small_habitats.overrides, *SETTINGS, "indicators.n_surveys=0", *shared_cluster_sets])]
    cmd += ["--from-model", "--model", small_map.model, "--habitat-model", small_habitats.model, "--out", str(out)]
    cmd += ["--quiet"]
    first = run_cli(*cmd, cwd=ROOT)  # in-process, on the session's cluster
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["tiles_computed"] == 9
    again = run_cli(*cmd, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["tiles_skipped"] == 9


def test_refusals_are_one_line(small_map, small_habitats, tmp_path, capsys):
    base = ["indicators", "--config", str(CONFIG), *_sets(small_habitats.overrides), "--quiet"]
    out = ["--out", str(tmp_path / "i.zarr")]
    raster = tmp_path / "dem.tif"
    # a user's inputs and no model: nothing to predict with
    assert main([*base, "--from-model", "--set", f"inputs.rasters=[{raster}]", *out]) == 2
    assert "needs a species model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*base, "--from-model", "--species", small_map.reference, *out]) == 2
    assert "--from-model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*base, "--model", small_map.model, "--species", small_map.reference, *out]) == 2
    assert "--from-model" in capsys.readouterr().err.strip().splitlines()[-1]
    missing = tmp_path / "no-model"
    bad = ["--from-model", "--model", small_map.model, "--habitat-model", str(missing), *out]
    assert main([*base, *bad, "--set", "indicators.n_surveys=0"]) == 2
    assert "no-model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "i.zarr").exists()
