"""The species map product (``species.zarr``): its layout, its tile job and tile function (run on the workers), its
plan (made on the driver from the config sections, never the whole configuration) and its registry entry.

Each tile task reads exactly its tile plus the model's halo (:class:`geoplantnet.inference.reader.MapSources`),
predicts its species codes (:class:`geoplantnet.inference.species.SpeciesPredictor`: the model loaded once per
worker process and kept) and writes its own region of the store with a marker (:mod:`geoplantnet.storage.tiles`);
:mod:`geoplantnet.runs.tiles` streams the tiles and skips those a previous run of the same fingerprint wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.config import GridConfig, MapConfig, redact
from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.core.hashing import fingerprint
from geoplantnet.inference.reader import MapSources, check_inputs
from geoplantnet.inference.species import (
    NO_COVERAGE,
    ModelFile,
    ModelRef,
    SpeciesPredictor,
    TileCompute,
    clear_seasons,
)
from geoplantnet.models.peers import PeerSpec
from geoplantnet.products.base import Product, TilePlan, register
from geoplantnet.samples.kinds import Modality
from geoplantnet.storage.overviews import CLASS_ATTRS
from geoplantnet.storage.store import YEARS_ATTR, default_encoding, exists, zarr_store
from geoplantnet.storage.tiles import (
    TileOutput,
    probability_attrs,
    species_chunks,
    tiled_variable,
    write_tile_blocks,
)

# distributed and torch are imported where a cluster is used or a model run: a command refuses bad input without them
if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.models.species_net import ModelSpec


class MapError(GeoplantnetError):
    """A map production that cannot start or a tile that failed (one line naming the tile)."""


# -- the store


COVERAGE = "clear_seasons"


def species_template(
    grid: Grid,
    species: Sequence[str],
    species_name: Sequence[str] | None,
    tile: int,
    species_chunk: int,
    coverage: bool = False,
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The lazy, never computed ``species.zarr`` layout on ``grid`` and its encoding; with ``coverage`` the
    ``clear_seasons`` bitmask of what each pixel's prediction saw (a model reading Sentinel-2)."""
    n = len(species)
    chunks, shards = species_chunks(n, tile, species_chunk)
    prob, enc = tiled_variable(
        ("species", "y", "x"),
        (n, grid.height, grid.width),
        dtype="uint8",
        fill=NODATA,
        chunks=chunks,
        shards=shards,
        scale=SCALE,
        attrs=probability_attrs("predicted probability of occurrence of each species"),
    )
    coords: dict[str, Any] = {"species": ("species", np.asarray(species, dtype=object)), **grid.coords()}
    if species_name is not None:
        coords["species_name"] = ("species", np.asarray(species_name, dtype=object))
    data, encoding = {"probability": prob}, {"probability": enc}
    if coverage:
        data[COVERAGE], encoding[COVERAGE] = tiled_variable(
            ("y", "x"),
            (grid.height, grid.width),
            dtype="int16",
            fill=NO_COVERAGE,
            chunks=(tile, tile),
            attrs={
                "long_name": "composite seasons seen clear by the prediction (bitmask)",
                "description": "bit s set where composite period s (the store's `seasons`) was cloud-free in every "
                "band at the pixel's centre; 0 = no clear season; -1 = not recorded",
                **CLASS_ATTRS,
            },
        )
    return xr.Dataset(data, coords=coords), encoding


SCALE_ATTR = "geoplantnet_output_scale"
_SCALES = {
    "calibrated": "calibrated probability of presence",
    "presence-absence": "probability of presence, uncalibrated",
    "presence-background": "relative suitability (presence-only training: not a probability of presence)",
    None: "model output, uncalibrated (the model file has no calibration or thresholds)",
}


def output_scale(spec: ModelSpec | PeerSpec) -> str:
    """What the map's values mean, from the model file: calibrated probabilities, uncalibrated probabilities, or
    relative suitability (a model trained on presences vs background points)."""
    if spec.calibration is not None:
        return _SCALES["calibrated"]
    return _SCALES[spec.thresholds.basis if spec.thresholds is not None else None]


def with_thresholds(
    template: xr.Dataset, encoding: dict[str, dict[str, Any]], spec: ModelSpec | PeerSpec
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The species store's layout with what the model file says of its scale: the ``geoplantnet_output_scale``
    attribute, and the per-species thresholds (``threshold_max_tss``, ``threshold_prevalence``, float32 on the
    species axis, NaN where none) when it has them. They are plain arrays, so :func:`tiles.prepare` writes them with
    the layout, before any tile and long before the store is marked complete."""
    ds = template.copy()
    scale = output_scale(spec)
    ds.attrs[SCALE_ATTR] = scale
    prob = ds["probability"]
    prob.attrs["output_scale"] = scale
    prob.attrs["calibration"] = spec.calibration.method if spec.calibration is not None else "none"
    if spec.thresholds is not None and spec.thresholds.basis == "presence-background":
        prob.attrs["long_name"] = "relative habitat suitability of each species (not a probability of presence)"
    if spec.thresholds is None:
        return ds, encoding
    th = spec.thresholds
    on = (
        f"chosen on out-of-fold predictions of the spatial-block cross-validation, {th.basis} samples"
        f"{', after calibration' if th.calibrated else ''}; NaN where a species had one class only"
    )
    described = {
        "max_tss": ("threshold maximising the true skill statistic (sensitivity + specificity - 1)", on),
        "prevalence": (
            "threshold at which the predicted prevalence equals the observed one",
            on
            + (
                " (observed prevalence: the share of presences among presence + background points)"
                if th.basis == "presence-background"
                else ""
            ),
        ),
    }
    arrays = th.as_arrays()
    enc = dict(encoding)
    for key, (long_name, description) in described.items():
        name = f"threshold_{key}"
        ds[name] = xr.DataArray(arrays[key], dims=("species",))
        ds[name].attrs.update(
            {
                "long_name": long_name,
                "units": "1",
                "description": description,
                "comment": f"p >= threshold is a predicted presence, on the scale of probability ({scale})",
            }
        )
        enc[name] = default_encoding(ds[[name]])[name]
    return ds, enc


# -- one tile


@dataclass(frozen=True)
class TileJob:
    """Everything a map tile task needs besides its tile (sent with each task; items are the only bulky part)."""

    predictor: SpeciesPredictor
    output: TileOutput
    coverage: bool = False  # write clear_seasons beside the probabilities


def map_tile(job: TileJob, tile: Tile) -> dict[str, Any]:
    """Read, predict and write one tile; returns its timings (runs on a worker)."""
    inputs = job.predictor.read(tile)
    codes, info = job.predictor.forward(inputs)
    t2 = time.perf_counter()
    loads = info.pop("model_loads")
    out = job.output
    blocks = {"probability": codes}
    clear = clear_seasons(inputs) if job.coverage else None
    if clear is not None:
        blocks[COVERAGE] = clear
    write_tile_blocks(out.url, blocks, tile, run=out.run, info=info, storage_options=out.storage_options)
    return {
        **info,
        "tile": tile.id,
        "pixels": tile.height * tile.width,
        "write_s": round(time.perf_counter() - t2, 3),
        "model_loads": loads,
    }


# -- the plan (driver side)


def run_parts(model_sha256: str, sources: MapSources, grid: Grid, settings: MapConfig) -> dict[str, str]:
    """What makes a map: the model file, the grids, the cube settings, the tiling (``settings``), the input items
    (named, so a refusal can say which differs)."""
    items = [i["id"] for i in (sources.s2_items or ())] + [i["id"] for i in (sources.env_items or ())]
    return {
        "model": model_sha256[:12],
        "grid": grid.label(),
        "cube": fingerprint(sources.settings.cube.model_dump(mode="json"))[:12] if sources.s2_items else "none",
        "tiling": f"tile={settings.tile} species_chunk={settings.species_chunk}",
        "inputs": fingerprint(sorted(items))[:12],
    }


def plan_predictor(
    model: str | ModelFile, sources: MapSources, grid: GridConfig, settings: MapConfig
) -> tuple[SpeciesPredictor, ModelSpec | PeerSpec, dict[str, str]]:
    """Read the model (unless given read) and check the run's inputs against it: the predictor tile tasks carry
    (pinned by the model file's sha256; grids from ``grid``, compute from ``settings``), the model's spec and the
    attributes naming it (``model_file``, ``model_sha256``, ``model_version``, ``model_spec``, ``seasons``)."""
    model = ModelFile.of(model)
    model_url, spec, sha = model.url, model.spec, model.sha256
    check_inputs(spec, sources, grid.grid())
    predictor = SpeciesPredictor(
        model=ModelRef(model_url, sha),
        sources=sources,
        map_grid=grid.grid(),
        cube_grid=grid.grid(sources.settings.cube.resolution) if sources.s2_items else None,
        compute=TileCompute.of(settings),
        point_model=isinstance(spec, PeerSpec),
        options=model.options,
    )
    attrs = {
        "model_file": redact({"url": model_url})["url"],
        "model_sha256": sha,
        "model_version": f"{getattr(spec, 'kind', 'species-net')}/{spec.version}/{sha[:12]}",
        "model_spec": spec.model_dump_json(),
        # the composite periods the tiles are read on: a refresh maps later years on the same periods, shifted
        "seasons": json.dumps([str(t) for t in np.asarray(sources.seasons or (), dtype="datetime64[D]")]),
    }
    return predictor, spec, attrs


@dataclass(frozen=True)
class MapPlan:
    """A map run decided on the driver before anything is written: the model's spec, the run's fingerprint parts,
    the store's attrs, the job every tile task receives and the tiling."""

    spec: ModelSpec | PeerSpec
    parts: dict[str, str]
    attrs: dict[str, str]
    job: TileJob
    settings: MapConfig

    def tiles(self, client: Client) -> TilePlan:
        """The tiled run for :mod:`geoplantnet.runs.tiles`: the store's layout with the model's scale and
        thresholds, and the resources a tile task asks of ``client`` (checked to exist)."""
        resources = self.job.predictor.resources(client)
        grid = self.job.predictor.map_grid
        template = species_template(
            grid,
            self.spec.species,
            self.spec.species_name,
            self.settings.tile,
            self.settings.species_chunk,
            coverage=self.job.coverage,
        )
        return TilePlan(
            fn=map_tile,
            job=self.job,
            output=self.job.output,
            grid=grid,
            tile=self.settings.tile,
            layout=with_thresholds(*template, self.spec),
            parts=self.parts,
            attrs=self.attrs,
            error=MapError,
            resources=resources,
        )


def plan_map(
    model: str | ModelFile,
    sources: MapSources,
    grid: GridConfig,
    settings: MapConfig,
    url: str,
    storage_options: dict[str, Any],
    year: int | None = None,
) -> MapPlan:
    """Read the model (unless given read), check the run's inputs against it, and fingerprint the run
    (:func:`run_parts`) writing ``url``; with ``year`` the run writes that year of a series (``refresh``)."""
    predictor, spec, attrs = plan_predictor(model, sources, grid, settings)
    parts = run_parts(predictor.model.sha256, sources, predictor.map_grid, settings)
    output = TileOutput.of(url, parts, storage_options, year=year)
    coverage = records_coverage(spec, sources, url, storage_options)
    return MapPlan(spec, parts, attrs, TileJob(predictor, output, coverage), settings)


def records_coverage(
    spec: ModelSpec | PeerSpec, sources: MapSources, url: str, storage_options: dict[str, Any]
) -> bool:
    """Whether the map records ``clear_seasons``: a model reading Sentinel-2 composites, into a new store or one
    that has the variable (a series begun before coverage was recorded keeps its layout: every year alike)."""
    if not sources.s2_items or not (Modality.PATCH in spec.modalities or Modality.SERIES in spec.modalities):
        return False
    if not exists(url, storage_options):
        return True
    group = zarr.open_group(zarr_store(url, storage_options), mode="r", use_consolidated=False)
    return YEARS_ATTR not in group.attrs or COVERAGE in group


def plan(ctx: Any, client: Client) -> TilePlan:
    """The registry's plan (``ctx``: a :class:`geoplantnet.runs.context.RunContext`): the run's inputs, its model
    (``map.model``, or one trained on its observations and cached by content) into ``<store.root>/species.zarr``."""
    model = ctx.cfg.map.model
    inputs = ctx.inputs(observations=model is None)
    if model is None:
        model, _ = ctx.species_model(client, inputs)
    url = ctx.url(PRODUCT.store)
    planned = plan_map(
        ctx.model_file(model), ctx.sources(inputs), ctx.cfg.grid, ctx.cfg.map, url, ctx.options(url), ctx.year
    )
    return planned.tiles(client)


PRODUCT = register(Product(name="species", store="species.zarr", title="species probabilities", yearly=True, plan=plan))
