"""Generate a whole virtual region (imagery, environment, species truth, habitats, observations) from one config.

Layout under ``out_dir``::

    environment/        COGs + collection.json + items.ndjson   (geoplantnet.sim.environment)
    sentinel2/          COGs + collection.json + items.ndjson   (geoplantnet.sim.sentinel2)
    truth/species_probability.zarr   probability (species, y, x) float32 on the map grid
    truth/habitat.zarr               habitat (y, x) int16 index into habitat_code (habitat_class)
    truth/indicators.zarr            richness_expected, threatened_expected, invasive_expected, value_score (y, x)
    truth/years/<YYYY>/{species_probability,habitat,indicators}.zarr   the same for each later year (sim.years > 1)
    truth/changes.zarr               change (year, y, x) int8 land-cover change kind vs the year before (sim.years > 1)
    tables/species.{parquet,csv}, tables/habitats.{parquet,csv}
    observations/plots.parquet, plot_species.parquet, presence_only.parquet
    value/biodiversity_value.parquet
    region.json                      the manifest, written last and atomically

Everything is a pure function of the configuration's grid and sim sections (and the package version), hashed into
the manifest: a second call with the same hash returns the manifest without touching a file; a folder without
``region.json`` (an interrupted run) is regenerated from scratch. Truth rasters are computed window by window, each
window written into its own region of the Zarr stores, so memory is bounded by the window, not the region.

Years: the truth stores above are the first year's (``sim.start``), which the observations sample. A region of
``sim.years`` > 1 adds, for every later year, truth stores of that year's land cover (same truth functions, other
layers unchanged) and one change store; their manifest keys are ``truth_<kind>_<YYYY>`` and ``truth_changes``
(:meth:`RegionManifest.truth_path`). A one-year region's manifest and files are exactly as before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm

import geoplantnet
from geoplantnet.core.config import RunConfig, SimConfig, redact
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid
from geoplantnet.core.hashing import fingerprint
from geoplantnet.sim.habitats import HabitatSet
from geoplantnet.sim.observations import (
    sample_plots,
    sample_presence_only,
    value_polygons,
    value_score,
    write_geoparquet,
)
from geoplantnet.sim.species import SpeciesPool
from geoplantnet.sources.stac_items import collection_for, write_collection
from geoplantnet.storage.outputs import claim_folder, finish_folder
from geoplantnet.storage.store import default_encoding, mark_complete, stamp

MANIFEST = "region.json"
SUBDIRS = ("environment", "sentinel2", "truth", "tables", "observations", "value")
PATHS = {
    "env_collection": "environment/collection.json",
    "env_items": "environment/items.ndjson",
    "s2_collection": "sentinel2/collection.json",
    "s2_items": "sentinel2/items.ndjson",
    "truth_species": "truth/species_probability.zarr",
    "truth_habitat": "truth/habitat.zarr",
    "truth_indicators": "truth/indicators.zarr",
    "species_table": "tables/species.parquet",
    "species_csv": "tables/species.csv",
    "habitat_table": "tables/habitats.parquet",
    "habitat_csv": "tables/habitats.csv",
    "species_status": "tables/species_status.csv",
    "habitat_status": "tables/habitat_status.csv",
    "plots": "observations/plots.parquet",
    "plot_species": "observations/plot_species.parquet",
    "presence_only": "observations/presence_only.parquet",
    "value_polygons": "value/biodiversity_value.parquet",
}
TRUTH_FILES = {"species": "species_probability.zarr", "habitat": "habitat.zarr", "indicators": "indicators.zarr"}
YEAR_TRUTH = "truth/years/{year}"  # folder of a later year's TRUTH_FILES
CHANGES = "truth/changes.zarr"
ENV_SAMPLE = 4000  # random points that calibrate niches and habitats to the region
WINDOW_BYTES = 256 * 2**20  # float32 probabilities of all species in one window


class RegionError(InputError):
    """A region folder or manifest that cannot be read or does not match."""


def year_paths(sim: SimConfig) -> dict[str, str]:
    """Manifest paths a multi-year region adds: each later year's truth stores and the change store (none for one
    year)."""
    later = sim.calendar_years[1:] if sim.years > 1 else []
    paths = {
        f"truth_{kind}_{year}": f"{YEAR_TRUTH.format(year=year)}/{name}"
        for year in later
        for kind, name in TRUTH_FILES.items()
    }
    return {**paths, "truth_changes": CHANGES} if later else {}


def config_hash(config: RunConfig) -> str:
    """Hash of everything that determines the region's content."""
    key = {
        "grid": config.grid.model_dump(mode="json"),
        "sim": config.sim.model_dump(mode="json"),
        "collections": [config.stac.env_collection, config.stac.s2_collection],
        "version": geoplantnet.__version__,
    }
    return fingerprint(key)


@dataclass(frozen=True)
class RegionManifest:
    """What a generated region holds and where (absolute paths; the JSON keeps them relative to the folder)."""

    root: Path
    config_hash: str
    seed: int
    version: str
    grid: dict[str, float | int]
    s2_grid: dict[str, float | int]
    counts: dict[str, int]
    paths: dict[str, str]
    created: str
    timings_s: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def path(self, key: str) -> Path:
        try:
            return self.root / self.paths[key]
        except KeyError:
            raise RegionError(f"{self.root / MANIFEST}: no path {key!r} in the manifest") from None

    env_collection_path = property(lambda self: self.path("env_collection"))
    env_items_path = property(lambda self: self.path("env_items"))
    s2_collection_path = property(lambda self: self.path("s2_collection"))
    s2_items_path = property(lambda self: self.path("s2_items"))
    truth_species = property(lambda self: self.path("truth_species"))
    truth_habitat = property(lambda self: self.path("truth_habitat"))
    truth_indicators = property(lambda self: self.path("truth_indicators"))
    species_table = property(lambda self: self.path("species_table"))
    habitat_table = property(lambda self: self.path("habitat_table"))
    plots = property(lambda self: self.path("plots"))
    plot_species = property(lambda self: self.path("plot_species"))
    presence_only = property(lambda self: self.path("presence_only"))
    value_polygons = property(lambda self: self.path("value_polygons"))

    @property
    def map_grid(self) -> Grid:
        return Grid(**self.grid)  # type: ignore[arg-type]

    @property
    def years(self) -> list[int]:
        """The region's calendar years (from the manifest's configuration), the first year first."""
        try:
            return SimConfig(**self.config["sim"]).calendar_years
        except (KeyError, TypeError, ValueError):
            raise RegionError(f"{self.root / MANIFEST}: no valid sim configuration in the manifest") from None

    def truth_path(self, kind: str, year: int | None = None) -> Path:
        """The truth store ``kind`` ("species", "habitat", "indicators") of ``year`` (default and first year: the
        stores of ``truth_<kind>``), or the change store for ``kind="changes"``."""
        if kind == "changes":
            return self.path("truth_changes")
        if kind not in TRUTH_FILES:
            raise RegionError(f"no truth kind {kind!r}; one of {sorted(TRUTH_FILES)} or 'changes'")
        years = self.years
        if year is not None and int(year) not in years:
            raise RegionError(f"{self.root}: no year {year} in the region (years {years})")
        if year is None or int(year) == years[0]:
            return self.path(f"truth_{kind}")
        return self.path(f"truth_{kind}_{int(year)}")

    def collections(self) -> list[tuple[Path, Path]]:
        """(collection.json, items.ndjson) of each STAC collection in the region, for a STAC server to load."""
        return [(self.env_collection_path, self.env_items_path), (self.s2_collection_path, self.s2_items_path)]

    def to_json(self) -> str:
        doc = asdict(self)
        doc["root"] = "."
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RegionManifest:
        """Read ``region.json`` (or the folder holding it)."""
        path = Path(path)
        file = path / MANIFEST if path.is_dir() else path
        try:
            doc = json.loads(file.read_text())
            doc["root"] = file.resolve().parent
            return cls(**doc)
        except FileNotFoundError:
            raise RegionError(f"{file}: no region manifest (generate the region first)") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise RegionError(f"{file}: not a region manifest ({exc.__class__.__name__}: {exc})") from None

    def write(self) -> Path:
        """Write the manifest atomically (rename), so its presence means the region is complete."""
        file = self.root / MANIFEST
        tmp = file.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, file)
        return file


def truth_window(chunk: int, n_species: int) -> int:
    """Window size (pixels) for truth generation: at most ``chunk``, and all species' float32 p under WINDOW_BYTES."""
    fit = int(np.sqrt(WINDOW_BYTES / (4 * max(n_species, 1)))) // 16 * 16  # round chunk sizes
    return max(16, min(chunk, fit))


def generate_region(
    config: RunConfig, out_dir: str | os.PathLike[str], *, progress: bool = True, overwrite: bool = True
) -> RegionManifest:
    """Write the whole virtual region under ``out_dir`` and return its manifest (reused if already complete with the
    same settings). A region of other settings is regenerated only with ``overwrite`` (the jobs' own cache under the
    workdir: always; ``geoplantnet simulate --out``: when asked)."""
    from geoplantnet.sim.environment import Environment

    root = Path(out_dir).resolve()
    digest = config_hash(config)
    if (root / MANIFEST).exists():
        try:
            old = RegionManifest.load(root)
        except RegionError:
            old = None
        current = old is not None and set(PATHS) <= set(old.paths)  # a region of an older layout lacks new files
        if current and old.config_hash == digest and all(old.path(k).exists() for k in old.paths):
            return old
    # regenerating removes the region's own files first: never in a folder geoplantnet did not make a region in (its
    # marker, or the manifest of a region from before the markers)
    claim_folder(root, "virtual region", (*SUBDIRS, MANIFEST), overwrite=overwrite, written_by_us=MANIFEST)

    sim = config.sim
    grid = config.grid.grid()
    s2_grid = config.grid.grid(sim.s2_resolution)
    timings: dict[str, float] = {}
    later = sim.calendar_years[1:] if sim.years > 1 else []
    bar = tqdm(total=7 + bool(later), desc="virtual region", disable=not progress)

    def step(name: str, fn: Any) -> Any:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        bar.update()
        return result

    env = Environment(sim, grid)
    env_items = step("environment", lambda: _write_env(config, grid, root, progress))
    s2_items = step("sentinel2", lambda: _write_s2(config, s2_grid, env, root, progress))
    pool, habitats = step("species_habitats", lambda: _pools(config, grid, env, root))
    indicators = step("truth", lambda: write_truth(config, grid, env, pool, habitats, root, progress=progress))
    if later:
        step("truth_years", lambda: _write_years(config, grid, env, pool, habitats, root, later, progress))
    when = {"seed": sim.seed, "start": sim.start, "years": sim.years}
    plots, plot_species = step("plots", lambda: sample_plots(pool, habitats, env, grid.bounds, sim.n_plots, **when))
    write_geoparquet(plots, root / PATHS["plots"])
    write_geoparquet(plot_species, root / PATHS["plot_species"])
    records = step("presence_only", lambda: sample_presence_only(pool, env, grid.bounds, sim.n_presence_only, **when))
    write_geoparquet(records, root / PATHS["presence_only"])
    polys = step(
        "value",
        lambda: value_polygons(
            indicators["value_score"].values, grid, zones=indicators["land_cover"].values,
            quantile=sim.value_quantile, max_per_class=sim.value_polygons, survey_sd=sim.value_survey_sd,
            seed=sim.seed,
        ),
    )  # fmt: skip
    write_geoparquet(polys, root / PATHS["value_polygons"])
    bar.close()

    manifest = RegionManifest(
        root=root,
        config_hash=digest,
        seed=sim.seed,
        version=geoplantnet.__version__,
        grid=grid.to_dict(),
        s2_grid=s2_grid.to_dict(),
        counts={
            "species": pool.n,
            "habitats": len(habitats.leaves),
            "habitat_codes": len(habitats.codes),
            "env_items": len(env_items),
            "s2_items": len(s2_items),
            "plots": len(plots),
            "plot_species": len(plot_species),
            "presence_only": len(records),
            "value_polygons": len(polys),
            **({"change_patches": len(env.changes)} if later else {}),
        },
        paths={**PATHS, **year_paths(sim)},
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        timings_s=timings,
        config=redact(config.model_dump(mode="json")),
    )
    manifest.write()
    finish_folder(root)
    return manifest


def _write_years(
    config: RunConfig,
    grid: Grid,
    env: Any,
    pool: SpeciesPool,
    habitats: HabitatSet,
    root: Path,
    years: list[int],
    progress: bool,
) -> None:
    """Truth stores of every later year and the change store."""
    for year in years:
        write_truth(config, grid, env, pool, habitats, root, year=year, progress=progress)
    write_changes(config, grid, env, root, progress=progress)


def _write_env(config: RunConfig, grid: Grid, root: Path, progress: bool) -> list:
    from geoplantnet.sim.environment import write_environment

    folder = root / "environment"
    items = write_environment(config.sim, grid, folder, collection_id=config.stac.env_collection, progress=progress)
    _collection(config.stac.env_collection, items, folder, "virtual environmental layers")
    return items


def _write_s2(config: RunConfig, s2_grid: Grid, env: Any, root: Path, progress: bool) -> list:
    from geoplantnet.sim.sentinel2 import write_sentinel2

    folder = root / "sentinel2"
    items = write_sentinel2(
        config.sim, s2_grid, env, folder, collection_id=config.stac.s2_collection, progress=progress
    )
    _collection(config.stac.s2_collection, items, folder, "virtual Sentinel-2 L2A surface reflectance")
    return items


def _pools(config: RunConfig, grid: Grid, env: Any, root: Path) -> tuple[SpeciesPool, HabitatSet]:
    """Species and habitats calibrated on the environment at random points of the region; tables written."""
    sim = config.sim
    rng = np.random.default_rng([sim.seed, 0xE5A])
    xmin, ymin, xmax, ymax = grid.bounds
    sx, sy = rng.uniform(xmin, xmax, ENV_SAMPLE), rng.uniform(ymin, ymax, ENV_SAMPLE)
    sample = env.at_points(sx, sy)
    pool = SpeciesPool.generate(sim.seed, sim.n_species, sample, sx, sy)
    habitats = HabitatSet.generate(sim.seed, sim.n_habitats, pool, sample)
    for key in ("species_table", "species_csv"):
        pool.write_table(root / PATHS[key])
    for key in ("habitat_table", "habitat_csv"):
        habitats.write_table(root / PATHS[key])
    pool.write_status(root / PATHS["species_status"])
    habitats.write_status(root / PATHS["habitat_status"], pool)
    return pool, habitats


def _collection(collection_id: str, items: list, folder: Path, description: str) -> None:
    """collection.json + items.ndjson beside the COGs (the writers may already have written them)."""
    if not (folder / "collection.json").exists() or not (folder / "items.ndjson").exists():
        write_collection(collection_for(collection_id, items, description), items, folder)


# --- truth rasters -----------------------------------------------------------------------------------------------
def _windows(grid: Grid, size: int) -> Iterator[tuple[slice, slice]]:
    for tile in grid.tiles(size):
        yield tile.slices


def _create(path: Path, ds: xr.Dataset, config: RunConfig) -> None:
    """Metadata and coordinates of a store whose data chunks are written later, window by window; committed by
    :func:`geoplantnet.storage.store.mark_complete` once every window is in."""
    ds = stamp(ds, config.to_attrs(), None)
    encoding = default_encoding(ds, clevel=3)
    for name, var in ds.data_vars.items():
        encoding[str(name)]["chunks"] = var.data.chunksize
    ds.to_zarr(path, mode="w", encoding=encoding, compute=False, consolidated=False)


def write_truth(
    config: RunConfig,
    grid: Grid,
    env: Any,
    pool: SpeciesPool,
    habitats: HabitatSet,
    root: Path,
    *,
    year: int | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Write the truth stores window by window; returns the 2-D indicators (and land cover) of the map, in memory.

    ``year`` (a later year of a multi-year region) writes that year's land cover's truth under
    ``truth/years/<year>/``; the default and the first year write ``truth/``."""
    size = truth_window(config.sim.chunk, pool.n)
    sp_chunk = min(16, pool.n)
    coords = grid.coords()

    def zeros(dtype: str, species: bool = False) -> da.Array:
        shape = ((pool.n,) if species else ()) + grid.shape
        chunks = ((sp_chunk,) if species else ()) + (size, size)
        return da.zeros(shape, dtype=dtype, chunks=chunks)

    species_ds = xr.Dataset(
        {"probability": (("species", "y", "x"), zeros("float32", species=True))},
        coords={**coords, "species": np.asarray(pool.ids), "species_name": ("species", np.asarray(pool.names))},
    )
    species_ds["probability"].attrs.update(
        {"long_name": "true occurrence probability of each virtual species", "units": "1", "valid_range": [0.0, 1.0]}
    )
    habitat_ds = xr.Dataset(
        {"habitat": (("y", "x"), zeros("int16"))},
        coords={
            **coords,
            # the class dimension is not called "habitat": that name is the data variable's (DESIGN.md)
            "habitat_code": ("habitat_class", np.asarray(habitats.codes)),
            "habitat_name": ("habitat_class", np.asarray(habitats.names)),
        },
    )
    habitat_ds["habitat"].attrs.update(
        {
            "long_name": "true habitat: EUNIS-like class of the expected assemblage",
            "flag_values": list(range(len(habitats.codes))),
            "flag_meanings": " ".join(habitats.codes),
        }
    )
    names = {
        "richness_expected": "expected species richness (sum of true probabilities)",
        "threatened_expected": "expected number of threatened species (IUCN VU/EN/CR)",
        "invasive_expected": "expected number of invasive species",
        "value_score": "biodiversity value score (richness + 4 x threatened)",
    }
    indicators_ds = xr.Dataset(
        {k: (("y", "x"), zeros("float32"), {"long_name": v, "units": "1"}) for k, v in names.items()}, coords=coords
    )
    first = year is None or int(year) == config.sim.first_year
    truth = root / "truth" if first else root / YEAR_TRUTH.format(year=int(year))  # type: ignore[arg-type]
    paths = {
        "probability": truth / TRUTH_FILES["species"],
        "habitat": truth / TRUTH_FILES["habitat"],
        "indicators": truth / TRUTH_FILES["indicators"],
    }
    for key, ds in (("probability", species_ds), ("habitat", habitat_ds), ("indicators", indicators_ds)):
        _create(paths[key], ds, config)
    prob = zarr.open_group(str(paths["probability"]), mode="r+")["probability"]
    hab = zarr.open_group(str(paths["habitat"]), mode="r+")["habitat"]
    ind = zarr.open_group(str(paths["indicators"]), mode="r+")
    indicators = {k: np.full(grid.shape, np.nan, dtype="float32") for k in names}
    land_cover = np.zeros(grid.shape, dtype="uint8")
    threatened, invasive = pool.threatened, np.asarray(pool.invasive)
    n_windows = int(np.prod(grid.n_tiles(size)))
    for ys, xs in tqdm(_windows(grid, size), total=n_windows, desc="truth windows", disable=not progress):
        sub = grid.subgrid(ys, xs)
        layers = env.layers(sub.x, sub.y, year=None if first else year)
        p = pool.probability(layers, sub.x, sub.y)
        prob[:, ys, xs] = p
        hab[ys, xs] = habitats.assign_expected(p, layers["land_cover"])
        land_cover[ys, xs] = layers["land_cover"]
        values = {
            "richness_expected": p.sum(axis=0),
            "threatened_expected": p[threatened].sum(axis=0),
            "invasive_expected": p[invasive].sum(axis=0),
        }
        values["value_score"] = value_score(values["richness_expected"], values["threatened_expected"])
        for k, v in values.items():
            ind[k][ys, xs] = v
            indicators[k][ys, xs] = v
        del p
    for path in paths.values():
        mark_complete(str(path), None)
    indicators["land_cover"] = land_cover  # in memory only: value areas follow land-cover boundaries
    return xr.Dataset({k: (("y", "x"), v) for k, v in indicators.items()}, coords=coords)


def write_changes(config: RunConfig, grid: Grid, env: Any, root: Path, *, progress: bool = False) -> Path:
    """Write ``truth/changes.zarr``: ``change`` (year, y, x) int8, the kind of land-cover change of each later year vs
    the year before on the map grid (0 = none, codes of ``CHANGE_KINDS``), window by window; returns its path."""
    from geoplantnet.sim.environment import CHANGE_KINDS

    years = env.years[1:]
    size = min(config.sim.chunk, 1024)
    ds = xr.Dataset(
        {"change": (("year", "y", "x"), da.zeros((len(years), *grid.shape), dtype="int8", chunks=(1, size, size)))},
        coords={**grid.coords(), "year": np.asarray(years, dtype="int32")},
    )
    ds["change"].attrs.update(
        {
            "long_name": "land-cover change since the year before",
            "flag_values": [0, *CHANGE_KINDS],
            "flag_meanings": " ".join(["no_change", *CHANGE_KINDS.values()]),
        }
    )
    path = root / CHANGES
    _create(path, ds, config)
    change = zarr.open_group(str(path), mode="r+")["change"]
    n_windows = int(np.prod(grid.n_tiles(size)))
    for ys, xs in tqdm(_windows(grid, size), total=n_windows, desc="change windows", disable=not progress):
        sub = grid.subgrid(ys, xs)
        first = env.layers(sub.x, sub.y)["land_cover"]
        for i, year in enumerate(years):
            change[i, ys, xs] = env.year_land_cover(first, sub.x, sub.y, year)[1]
    mark_complete(str(path), None)
    return path
