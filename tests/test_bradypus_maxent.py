"""MaxEnt peer on the classic Bradypus variegatus data: AUC in the published range, and spatial blocks < random folds.

Data (../shared/data/real, see each PROVENANCE.md): ``predicts_bradypus_bioclim`` (116 presences with lon/lat and
9 WorldClim layers at 0.5°: the dismo/predicts MaxEnt tutorial set) and ``elapid_sdm_samples`` (maxnet's Bradypus
presence/background table without coordinates; Ariolimax with coordinates). Published test AUCs for MaxEnt on Bradypus
are about 0.8-0.9 with random splits (Phillips et al. 2006); elapid's own tests only ask for 0.5 <= AUC <= 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplantnet.models.peers import MaxentPeer
from geoplantnet.validation.blocks import choose_block_size, spatial_blocks
from geoplantnet.validation.metrics import cross_validate

pytest.importorskip("elapid")
pytestmark = pytest.mark.real_data

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PREDICTS = REAL / "predicts_bradypus_bioclim"
ELAPID = REAL / "elapid_sdm_samples"
SOUTH_AMERICA_ALBERS = "ESRI:102033"  # equal-area metres, so square blocks have equal areas
FOLDS = 5


def _need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")


def _mean_auc(X: np.ndarray, labels: np.ndarray, source: np.ndarray, folds: np.ndarray) -> float:
    res = cross_validate(MaxentPeer, X, labels, source, folds)
    return float(np.nanmean([f["auc"] for f in res["folds"]]))


@pytest.fixture(scope="module")
def bradypus() -> dict[str, np.ndarray]:
    """116 presences + 1,000 random background cells (seeded), bioclim values, projected coordinates."""
    _need(PREDICTS)
    import rasterio
    from pyproj import Transformer

    pres = pd.read_csv(PREDICTS / "bradypus.csv")
    with rasterio.open(PREDICTS / "bio.tif") as src:
        bio, transform = src.read(), src.transform
    rows, cols = np.nonzero(np.isfinite(bio).all(axis=0))
    pick = np.random.default_rng(0).choice(len(rows), 1000, replace=False)
    br, bc = rows[pick], cols[pick]
    pr, pc = rasterio.transform.rowcol(transform, pres["lon"].to_numpy(), pres["lat"].to_numpy())
    pr, pc = np.asarray(pr), np.asarray(pc)
    blon, blat = rasterio.transform.xy(transform, br, bc)
    lon, lat = np.r_[pres["lon"].to_numpy(), blon], np.r_[pres["lat"].to_numpy(), blat]
    x, y = Transformer.from_crs(4326, SOUTH_AMERICA_ALBERS, always_xy=True).transform(lon, lat)
    presence = np.r_[np.ones(len(pr)), np.zeros(len(br))].astype("int8")
    return {
        "x": np.asarray(x),
        "y": np.asarray(y),
        "X": np.vstack([bio[:, pr, pc].T, bio[:, br, bc].T]),
        "labels": presence[:, None],
        "source": np.where(presence == 1, "po", "bg"),
    }


def test_bradypus_spatial_block_auc_in_range_and_below_random(bradypus: dict[str, np.ndarray]) -> None:
    d = bradypus
    presence = d["labels"][:, 0]
    random_folds = np.random.default_rng(0).integers(0, FOLDS, len(presence))
    # 500 km blocks (about 5 degrees) give ~100 occupied blocks; presences stratified so each fold can score an AUC.
    block_folds = spatial_blocks(d["x"], d["y"], 500_000.0, FOLDS, seed=0, stratify=presence)
    auc_random = _mean_auc(d["X"], d["labels"], d["source"], random_folds)
    auc_blocks = _mean_auc(d["X"], d["labels"], d["source"], block_folds)
    assert 0.80 <= auc_random <= 0.95, auc_random
    assert 0.75 <= auc_blocks <= 0.92, auc_blocks
    assert auc_blocks < auc_random  # the optimism of random CV on autocorrelated points


def test_bradypus_automatic_block_size(bradypus: dict[str, np.ndarray]) -> None:
    d = bradypus
    size = choose_block_size(d["x"], d["y"], d["X"], folds=FOLDS)
    # Continental climate gradients have no sill within the data: the range is capped, then shrunk to 2*folds blocks.
    assert size % 1000 == 0 and 1_000_000 <= size <= 6_000_000
    folds = spatial_blocks(d["x"], d["y"], size, FOLDS, seed=0, stratify=d["labels"][:, 0])
    random_folds = np.random.default_rng(0).integers(0, FOLDS, len(folds))
    assert _mean_auc(d["X"], d["labels"], d["source"], folds) < _mean_auc(
        d["X"], d["labels"], d["source"], random_folds
    )


def test_elapid_bradypus_table_random_folds() -> None:
    """maxnet's Bradypus table (14 covariates, no coordinates): random 5-fold AUC as published."""
    _need(ELAPID)
    table = pd.read_csv(ELAPID / "bradypus.csv.gz")
    presence = table["presence"].to_numpy().astype("int8")
    X = table.drop(columns="presence").to_numpy("float64")  # ecoreg used as a number: a simplification
    folds = np.random.default_rng(0).integers(0, FOLDS, len(presence))
    auc = _mean_auc(X, presence[:, None], np.where(presence == 1, "po", "bg"), folds)
    assert 0.80 <= auc <= 0.95, auc


@pytest.mark.slow
def test_ariolimax_spatial_blocks_below_random() -> None:
    """6,585 banana-slug points (UTM 10N): automatic blocks vs random folds (~45 s)."""
    _need(ELAPID)
    import geopandas as gpd

    gdf = gpd.read_file(ELAPID / "ariolimax.gpkg")
    presence = gdf["presence"].to_numpy().astype("int8")
    X = gdf.drop(columns=["presence", "geometry"]).to_numpy("float64")
    x, y = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
    labels, source = presence[:, None], np.where(presence == 1, "po", "bg")
    size = choose_block_size(x, y, X, folds=FOLDS)
    blocks = _mean_auc(X, labels, source, spatial_blocks(x, y, size, FOLDS, seed=0, stratify=presence))
    random = _mean_auc(X, labels, source, np.random.default_rng(0).integers(0, FOLDS, len(presence)))
    assert 0.75 <= blocks < random <= 1.0, (blocks, random)
