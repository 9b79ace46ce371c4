"""Tiny seeded Sentinel-2-like COGs and STAC items for the cube and predictor tests (real files, real items); the
small virtual region with a trained model and its map, shared by the map and predict tests."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from pyproj import Transformer

from geoplantnet.core.config import RunConfig
from geoplantnet.core.grid import Grid
from geoplantnet.sources.cog import write_cog
from geoplantnet.sources.stac_items import AssetSpec, item_from_cogs
from geoplantnet.testing.regions import SMALL_REGION

# Near 10°E 50°N: inside UTM zone 32N, so a UTM item and an EPSG:3035 item can cover the same grid.
ORIGIN = (4_321_000.0, 2_981_000.0)
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
ALL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCALE, OFFSET = 1e-4, -0.1  # L2A processing baseline >= 04.00


def small_grid(resolution: float = 10.0, size: int = 64) -> Grid:
    return Grid.from_origin(*ORIGIN, resolution, size, size)


def write_coast_layers(folder: Path, grid: Grid, sea_from: float, names: Sequence[str]) -> dict[str, Path]:
    """Float GeoTIFF layers ``names`` (``<folder>/<name>.tif``, seeded noise around 10) at ``grid``'s resolution,
    offset half a cell from it (so the warp onto ``grid`` interpolates), NaN (sea) east of ``sea_from``: the warp
    leaves the coastal cells no data although their western neighbours have data."""
    import rasterio
    from rasterio.transform import from_origin

    res = grid.resolution
    left, top = grid.left - res / 2, grid.top + res / 2
    width, height = grid.width + 1, grid.height + 1
    xs = left + (np.arange(width) + 0.5) * res
    sea = np.broadcast_to(xs >= sea_from, (height, width))
    rng = np.random.default_rng(0)
    out = {}
    for name in names:
        data = rng.normal(10, 3, (height, width)).astype("float32")
        data[sea] = np.nan
        path = folder / f"{name}.tif"
        profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "float32"}
        with rasterio.open(
            path, "w", **profile, crs=f"EPSG:{grid.epsg}", transform=from_origin(left, top, res, res), nodata=np.nan
        ) as ds:
            ds.write(data, 1)
        out[name] = path
    return out


def dn(band: str, t: int, shape: tuple[int, int]) -> np.ndarray:
    """Known uint16 digital numbers: distinct per band, date, row and column."""
    rows, cols = np.indices(shape)
    return (1000 + 200 * ALL_BANDS.index(band) + 50 * t + 3 * rows + cols).astype("uint16")


def scl(t: int, shape: tuple[int, int]) -> np.ndarray:
    """A scene classification with vegetation (4) and a known scatter of cloud (9), shadow (3), snow (11), no data."""
    rows, cols = np.indices(shape)
    out = np.full(shape, 4, dtype="uint8")
    out[(rows + 2 * cols + t) % 7 == 0] = 9
    out[(rows * cols + t) % 11 == 1] = 3
    out[(rows + t) % 13 == 5] = 11
    out[0, t % shape[1]] = 0
    return out


def write_s2_item(
    folder: Path,
    grid10: Grid,
    when: datetime,
    t: int,
    *,
    bands: Sequence[str] = ALL_BANDS,
    with_scl: bool = True,
    zero: Sequence[tuple[str, int, int]] = (),
    item_id: str | None = None,
) -> pystac.Item:
    """One L2A-like item: 10 m bands on ``grid10``, 20 m bands and SCL on the 20 m grid; ``zero`` sets nodata."""
    item_id = item_id or f"S2_T{t:02d}_{when:%Y%m%d}"
    grid20 = grid10.at_resolution(grid10.resolution * 2)
    specs = []
    for band in bands:
        g = grid10 if band in BANDS_10M else grid20
        arr = dn(band, t, g.shape)
        for b, r, c in zero:
            if b == band:
                arr[r, c] = 0
        path = write_cog(folder / item_id / f"{band}.tif", arr, g.transform, 3035, nodata=0, blocksize=256)
        specs.append(AssetSpec(band, str(path), scale=SCALE, offset=OFFSET))
    if with_scl:
        path = write_cog(folder / item_id / "SCL.tif", scl(t, grid20.shape), grid20.transform, 3035, nodata=0)
        specs.append(AssetSpec("SCL", str(path)))
    return item_from_cogs(item_id, when, specs, collection="sentinel-2-l2a", properties={"eo:cloud_cover": 10.0 * t})


def write_s2_series(folder: Path, grid10: Grid, dates: Sequence[datetime], **kwargs: object) -> list[pystac.Item]:
    return [write_s2_item(folder, grid10, when, t, **kwargs) for t, when in enumerate(dates)]  # type: ignore[arg-type]


def utm_ramp(e: np.ndarray, n: np.ndarray, e0: float, n0: float) -> np.ndarray:
    """A smooth DN field defined in UTM 32N coordinates (so reprojected values can be checked analytically)."""
    return 1000.0 + (e - e0) / 10.0 + (n - n0) / 20.0


def write_ramp_item(folder: Path, grid: Grid, when: datetime, epsg: int, item_id: str) -> tuple[pystac.Item, tuple]:
    """A B04 item whose DN is :func:`utm_ramp`, written natively in ``epsg`` (32632 or 3035) over ``grid`` + margin."""
    from affine import Affine

    to_utm = Transformer.from_crs(3035, 32632, always_xy=True)
    e0, n0, e1, n1 = to_utm.transform_bounds(*grid.bounds, densify_pts=21)
    e0, n0 = np.floor(e0 / 10) * 10 - 100, np.floor(n0 / 10) * 10 - 100
    if epsg == 32632:
        width, height = int((e1 - e0) // 10) + 20, int((n1 - n0) // 10) + 20
        transform = Affine(10.0, 0.0, e0, 0.0, -10.0, n0 + height * 10.0)
        e, n = np.meshgrid(e0 + (np.arange(width) + 0.5) * 10.0, n0 + height * 10.0 - (np.arange(height) + 0.5) * 10.0)
    else:
        big = Grid.from_bounds(
            (grid.left - 100, grid.bottom - 100, grid.right + 100, grid.top + 100), grid.resolution, check_europe=False
        )
        transform = big.transform
        x, y = np.meshgrid(big.x, big.y)
        e, n = to_utm.transform(x, y)
    arr = np.round(utm_ramp(np.asarray(e), np.asarray(n), e0, n0)).astype("uint16")
    path = write_cog(folder / item_id / "B04.tif", arr, transform, epsg, nodata=0)
    item = item_from_cogs(item_id, when, [AssetSpec("B04", str(path), scale=SCALE, offset=OFFSET)])
    return item, (e0, n0)


def dates(n: int, start: datetime = datetime(2023, 1, 5, tzinfo=UTC), step_days: int = 23) -> list[datetime]:
    from datetime import timedelta

    return [start + timedelta(days=step_days * i) for i in range(n)]


# -- the small virtual region, a model trained on it and its reference map (shared by the map and predict tests)


def small_region(workdir: Path, default_config: Path) -> Path:
    """``SMALL_REGION`` generated once under ``workdir/region``; returns ``workdir``. Tests copy it with
    :func:`copy_region` rather than generate it again."""
    from geoplantnet.core.config import load_config
    from geoplantnet.sim.region import generate_region

    cfg = load_config(default_config, [*SMALL_REGION, f"workdir={workdir}"])
    generate_region(cfg, workdir / "region", progress=False)
    return workdir


def copy_region(source: Path, workdir: Path) -> Path:
    """A copy of the region of the workdir ``source`` into ``workdir/region``, so a command run there with the same
    grid and ``sim`` settings reuses it (the region is keyed by a hash of those settings, its manifest names its files
    relative to its folder, and its STAC items name the source's COGs, which stay read only); returns ``workdir``."""
    shutil.copytree(source / "region", workdir / "region")
    return workdir


MAP_SETTINGS = [
    *SMALL_REGION,
    "train.epochs=8",
    "map.tile=16",  # 40 x 40 map pixels -> 9 tiles, edge tiles clipped
]


@dataclass
class SmallMap:
    """What :func:`small_map` made: read it; write new stores under ``root`` only, never over ``reference``."""

    cfg: RunConfig
    overrides: list[str]  # --set values of a command that should see the same region, workdir and model
    model: str
    sources: Any  # geoplantnet.inference.reader.MapSources
    reference: str
    summary: Any  # geoplantnet.jobs.mapping.MapSummary
    root: Path


def small_map(root: Path, default_config: Path, region: Path, cluster: Sequence[str] = ()) -> SmallMap:
    """The small virtual region (a copy of the workdir ``region``'s) under ``root``, a model trained on it (cached in
    the workdir, as the map command caches it) and the reference map written by an embedded LocalCluster, or by the
    cluster the ``cluster`` overrides name (not kept in :attr:`SmallMap.overrides`)."""
    from geoplantnet.core.config import load_config
    from geoplantnet.jobs.mapping import produce_map
    from geoplantnet.runs.context import RunContext
    from geoplantnet.runs.inputs import virtual_inputs
    from geoplantnet.runtime.cluster import connect

    overrides = [*MAP_SETTINGS, f"workdir={copy_region(region, root / 'work')}", f"store.root={root / 'out'}"]
    cfg = load_config(default_config, overrides)
    inputs = virtual_inputs(cfg)
    with connect(load_config(default_config, [*overrides, *cluster]).cluster) as client:
        model, trained = RunContext(cfg).species_model(client, inputs)
        assert trained is not None and trained["epochs"] >= 1
        sources = RunContext(cfg).sources(inputs)
        reference = str(root / "reference.zarr")
        summary = produce_map(client, cfg, model, sources, reference, progress=False)
    return SmallMap(cfg, overrides, model, sources, reference, summary, root)


def tiny_classifier(cfg: RunConfig, species: Sequence[str], folder: Path) -> str:
    """A tiny habitat classifier trained from scratch on the virtual region's plots of ``cfg`` (a vocabulary of
    ``species``: the map's ids), saved in ``folder``; returns the folder."""
    from geoplantnet.core.config import PlotModelConfig, PlotTrainConfig
    from geoplantnet.models.plantbert import build_tokenizer, encode_sentences
    from geoplantnet.runs.inputs import virtual_plots
    from geoplantnet.training.plantbert import finetune

    plots, _ = virtual_plots(cfg)
    plots = plots.subset(plots.labelled)
    species = [str(s) for s in species]
    if not {s for sentence in plots.sentences for s in sentence} <= set(species):
        raise AssertionError("the plots and the map must share one species id space")
    classes = tuple(sorted(set(plots.habitat)))
    tokenizer = build_tokenizer(species)
    model_cfg = PlotModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_species=32)
    ids, _ = encode_sentences(tokenizer, plots.sentences, model_cfg.max_species)
    labels = np.asarray([classes.index(h) for h in plots.habitat])
    train = PlotTrainConfig(finetune_epochs=3, pretrain_epochs=0)
    model, _ = finetune(tokenizer, None, ids, labels, ids[:0], labels[:0], classes, model_cfg, train)
    model.save(folder)
    return str(folder)


@dataclass
class SmallHabitats:
    """A habitat classifier and the habitat map of :class:`SmallMap`'s reference species map (read only)."""

    model: str
    store: str
    overrides: list[str]


def small_habitats(small: SmallMap, default_config: Path, cluster: Sequence[str] = ()) -> SmallHabitats:
    """:func:`tiny_classifier` and ``habitat.zarr`` of the small map (each pixel's top 8 species: the small map's
    model has no thresholds), written by an embedded LocalCluster (or the one the ``cluster`` overrides name) under
    ``small.root/habitats``."""
    from geoplantnet.core.config import load_config
    from geoplantnet.jobs.habitat_map import run_habitat_map
    from geoplantnet.storage.store import open_store

    folder = small.root / "habitats"
    folder.mkdir(exist_ok=True)
    species = [str(s) for s in open_store(small.reference)["species"].values]
    model = tiny_classifier(small.cfg, species, folder / "model")
    overrides = [*small.overrides, "habitats.map_species=8"]
    store = str(folder / "habitat.zarr")
    run_habitat_map(load_config(default_config, [*overrides, *cluster]), small.reference, model, store, progress=False)
    return SmallHabitats(model, store, overrides)


# -- the sdm command on the small region (shared by the sdm and calibration tests)

# 3 epochs left the CNN untrained; the tuned MaxEnt tries two settings (its default grid is minutes per species)
SDM_SETTINGS = [
    *SMALL_REGION,
    "train.epochs=10",
    "validation.folds=3",
    "validation.maxent_features=[L,LQ]",
    "validation.maxent_betas=[2]",
]


@dataclass
class SmallSdm:
    """What :func:`small_sdm` made: read it; write under ``root`` only, never into ``out``."""

    summary: dict[str, Any]  # the command's JSON output
    overrides: list[str]  # --set values of a command that should see the same region (its workdir)
    out: Path  # the command's --out: report, models, summary.json
    root: Path


def small_sdm(root: Path, region: Path, project: Path, cluster: Sequence[str] = ()) -> SmallSdm:
    """``geoplantnet sdm`` run from ``project`` (the checkout under test) with its arguments as a user gives them, in
    this process (:func:`geoplantnet.testing.cli.run_cli`), on a copy of the workdir ``region``'s small region: the
    CNN, MaxEnt and the random forest scored on spatial folds, calibrated, and trained on all samples for maps; on the
    cluster the ``cluster`` overrides name, if any (not kept in :attr:`SmallSdm.overrides`)."""
    import json

    from geoplantnet.testing.cli import cli_sets, run_cli

    overrides = [*SDM_SETTINGS, f"workdir={copy_region(region, root / 'work')}"]
    out = root / "sdm"
    proc = run_cli("sdm", "--quiet", "--out", out, *cli_sets([*overrides, *cluster]), cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SmallSdm(json.loads(proc.stdout[proc.stdout.index("{") :]), overrides, out, root)


# -- one store root holding every product (the notebooks and the viewer read it)

SERIES_YEARS = (2024, 2025)
PRODUCTS_SETTINGS = [
    *SMALL_REGION,
    "sim.years=2",  # imagery of 2024 and 2025, with known changes in 2025
    "map.tile=16",
    "train.epochs=2",  # the products' plumbing, not their skill
    "indicators.block_size=500",
    "indicators.draws=4",
    "indicators.n_surveys=60",
    "value.tile=120",  # as tests/test_impact.py's tiny value model: 2 x 2 tiles of 120 pixels at 10 m
    "value.folds=2",
    "value.epochs=2",
    "value.crop=32",
    "value.base_channels=4",
    "value.draws=2",
    "value.forest_trees=10",
    "value.pixels_per_polygon=30",
    "impact.draws=3",
    "impact.min_class_surveys=5",
]
IMPACT_SCENARIO = "notebook-project"


def _footprint_square(cfg: RunConfig, size: int = 15) -> tuple[Any, int]:
    """A ``size`` x 10 m square of one land-cover class inside the region (its first found, scanning from the
    centre) and the commonest other class: the impact scenario's footprint and target."""
    import rasterio
    import shapely

    from geoplantnet.sim.region import RegionManifest

    with rasterio.open(RegionManifest.load(Path(cfg.workdir) / "region").root / "environment" / "land_cover.tif") as s:
        lc, t = s.read(1), s.transform
    mid = lc.shape[0] // 2
    for i in sorted(range(20, lc.shape[0] - size - 20, 5), key=lambda r: abs(r - mid)):
        for j in sorted(range(20, lc.shape[1] - size - 20, 5), key=lambda c: abs(c - mid)):
            values = np.unique(lc[i : i + size, j : j + size])
            if len(values) == 1:
                others, counts = np.unique(lc[lc != values[0]], return_counts=True)
                square = shapely.box(t.c + j * 10, t.f - (i + size) * 10, t.c + (j + size) * 10, t.f - i * 10)
                return square, int(others[np.argmax(counts)])
    raise AssertionError("no homogeneous square in the region")


def products_root(tmp: Path, project: Path, cluster: Sequence[str] = ()) -> Path:
    """One store root (``tmp/out``) with every product, made by the commands as a user runs them (in this process,
    :func:`geoplantnet.testing.cli.run_cli`; on the cluster the ``cluster`` overrides name): ``refresh --year`` for
    each of :data:`SERIES_YEARS` (species, habitat, indicators and changes as series; the classifier a
    :func:`tiny_classifier`), ``value`` (value.zarr, value_50m.zarr) and an ``impact`` report
    (``impact/<IMPACT_SCENARIO>``). Small region, two training epochs: plumbing, not skill. Returns the root."""
    import json

    import geopandas as gpd

    from geoplantnet.core.config import load_config
    from geoplantnet.jobs.refresh import year_window
    from geoplantnet.sim.region import generate_region
    from geoplantnet.testing.cli import cli_sets, run_cli

    config = project / "pipelines" / "refresh.yaml"
    out = tmp / "out"
    settings = [*PRODUCTS_SETTINGS, f"workdir={tmp / 'work'}", f"store.root={out}"]
    base = load_config(config, [*settings, "refresh.habitat_model=null"])
    generate_region(base, Path(base.workdir) / "region", progress=False)
    classifier = tiny_classifier(base, [f"sp{i + 1:04d}" for i in range(base.sim.n_species)], tmp / "classifier")
    settings.append(f"refresh.habitat_model={classifier}")

    def run(*args: str | Path, sets: Sequence[str] = ()) -> str:
        proc = run_cli(*args, "--config", config, "--quiet", *cli_sets([*settings, *sets, *cluster]), cwd=project)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    summaries = [json.loads(run("refresh", "--year", str(year))) for year in SERIES_YEARS]
    # the value and impact commands see the last year's imagery (the seasons the series' model was trained on)
    window = [f"cube.datetime={year_window(base.cube.composite, SERIES_YEARS[-1])}"]
    run("value", sets=window)
    square, target = _footprint_square(base)
    gpd.GeoDataFrame({"name": ["project"]}, geometry=[square], crs=base.grid.epsg).to_crs(4326).to_file(
        tmp / "footprint.geojson", driver="GeoJSON"
    )
    scenario = tmp / "scenario.yaml"
    scenario.write_text(f"name: {IMPACT_SCENARIO}\nland_cover: {target}\nbuffer_m: 60\nedge_strength: 0.3\n")
    models = ("--model", summaries[0]["model"], "--habitat-model", classifier)
    run("impact", "--footprint", tmp / "footprint.geojson", "--scenario", scenario, *models, sets=window)
    return out
