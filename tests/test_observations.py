"""Observations from any file and CRS: cleaning with counts, vocabulary, samples and background points."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point

from geoplantnet.core.grid import Grid, to_grid_crs
from geoplantnet.samples.observations import (
    ObservationsError,
    SpeciesVocabulary,
    background_points,
    build_samples,
    load_observations,
)

GRID = Grid(50.0, 4_321_000.0, 2_981_000.0, 100, 100)  # 5 km x 5 km


def _lonlat(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(GRID.left + 100, GRID.right - 100, n)
    y = rng.uniform(GRID.bottom + 100, GRID.top - 100, n)
    from pyproj import Transformer

    return Transformer.from_crs(3035, 4326, always_xy=True).transform(x, y)


def test_csv_cleaning_is_counted(tmp_path):
    lon, lat = _lonlat(6)
    rows = pd.DataFrame({"species": ["A a", "B b", "A a", "C c", "A a", ""], "lon": lon, "lat": lat})
    bad = pd.DataFrame(
        {"species": ["A a", "B b", "A a"], "lon": [np.nan, 10.0, 0.0], "lat": [50.0, 95.0, 10.0]}  # NaN, lat>90, far
    )
    table = pd.concat([rows, bad, rows.iloc[[0]]], ignore_index=True)  # plus one exact duplicate
    path = tmp_path / "records.csv"
    table.to_csv(path, index=False)
    obs = load_observations(path, grid=GRID)
    assert obs.report == {
        "read": 10,
        "dropped_bad_coordinates": 2,
        "dropped_no_species": 1,
        "dropped_outside_grid": 1,
        "dropped_duplicates": 1,
    }
    assert len(obs.records) == 5 and obs.records.survey_id.isna().all()
    assert "dropped: bad_coordinates 2" in obs.summary()


def test_geoparquet_and_projected_csv_give_the_same_samples(tmp_path):
    lon, lat = _lonlat(20, seed=1)
    species = [f"sp{i % 4}" for i in range(20)]
    gdf = gpd.GeoDataFrame({"taxon": species}, geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)], crs=4326)
    gdf.to_parquet(tmp_path / "r.parquet")
    x, y = to_grid_crs(np.asarray(lon), np.asarray(lat), 4326)
    pd.DataFrame({"taxon": species, "E": x, "N": y}).to_csv(tmp_path / "r.csv", index=False)
    a = load_observations(tmp_path / "r.parquet", species="taxon", grid=GRID)
    b = load_observations(tmp_path / "r.csv", crs="EPSG:3035", x="E", y="N", species="taxon", grid=GRID)
    np.testing.assert_allclose(a.records[["x", "y"]], b.records[["x", "y"]], atol=1e-3)
    vocab = SpeciesVocabulary.from_observations(a)
    np.testing.assert_array_equal(build_samples(a, vocab, GRID).label, build_samples(b, vocab, GRID).label)


def test_surveys_records_and_background_labels(tmp_path):
    lon, lat = _lonlat(4, seed=2)
    table = pd.DataFrame(
        {
            "species": ["A a", "B b", "A a", "C c"],
            "lon": [lon[0], lon[0], lon[1], lon[2]],
            "lat": [lat[0], lat[0], lat[1], lat[2]],
            "plot": ["p1", "p1", None, None],
            "present": ["present", "absent", "1", "1"],
        }
    )
    table.to_csv(tmp_path / "mixed.csv", index=False)
    obs = load_observations(tmp_path / "mixed.csv", presence="present", survey="plot", grid=GRID)
    vocab = SpeciesVocabulary.from_observations(obs)
    assert vocab.ids == ("A a", "B b", "C c")
    s = build_samples(obs, vocab, GRID, n_background=5, seed=3)
    assert s.source.tolist() == ["pa", "po", "po", "bg", "bg", "bg", "bg", "bg"]
    assert s.label[0].tolist() == [1, 0, 0]  # survey: complete list, unlisted C c absent
    assert s.label[1].tolist() == [1, -1, -1] and s.label[2].tolist() == [-1, -1, 1]
    assert (s.label[3:] == 0).all() and GRID.contains(s.x, s.y).all()
    with pytest.raises(ObservationsError, match=r"unknown species: 'Z z' \(not in the vocabulary of 3 species\)"):
        vocab.encode(["A a", "Z z"])
    vocab.to_json(tmp_path / "v.json")
    assert SpeciesVocabulary.from_json(tmp_path / "v.json") == vocab


def test_target_group_background_follows_the_records():
    lon, lat = _lonlat(200, seed=4)
    x, y = to_grid_crs(np.asarray(lon), np.asarray(lat), 4326)
    keep = x < GRID.left + 1000  # all records in the western fifth: observer bias
    from geoplantnet.samples.observations import Observations

    records = pd.DataFrame(
        {
            "record_id": "r",
            "survey_id": pd.Series(pd.NA, index=range(keep.sum()), dtype="string"),
            "species_id": "A",
            "species_name": "A",
            "presence": 1,
            "x": x[keep],
            "y": y[keep],
            "date": None,
        }
    )
    obs = Observations(records, 3035)
    tx, _ = background_points(obs, GRID, 500, kind="target_group", seed=0)
    ux, _ = background_points(obs, GRID, 500, kind="uniform", seed=0)
    assert np.median(tx) < GRID.left + 1200 < np.median(ux)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "a.csv").write_text("name,lon,lat\nA,10,50\n")
    with pytest.raises(ObservationsError, match=r"no column 'species' \(columns: \['name', 'lon', 'lat'\]\)"):
        load_observations(tmp_path / "a.csv", grid=GRID)
    with pytest.raises(ObservationsError, match="no valid records left"):
        load_observations(tmp_path / "a.csv", species="name", grid=GRID)
    with pytest.raises(ObservationsError, match="cannot read"):
        load_observations(tmp_path / "missing.csv", grid=GRID)
    (tmp_path / "p.csv").write_text("species,lon,lat,pa\nA,10,50,maybe\n")
    with pytest.raises(ObservationsError, match="presence values must be"):
        load_observations(tmp_path / "p.csv", presence="pa", grid=GRID)
