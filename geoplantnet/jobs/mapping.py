"""Map production: a trained species model applied over the whole grid, one Dask task per tile, into ``species.zarr``.

Each task builds a lazy cube over exactly its tile plus the model's halo (stackstac on the window grid clipped to
the run's grid, only the items that touch it; NaN beyond the grid, as training cuts samples), reads it, runs the
model densely (:mod:`geoplantnet.inference.dense`) and writes its own region of the store with a marker
(:mod:`geoplantnet.storage.tiles`). The model is loaded once per worker process and kept. The driver streams tiles
to the cluster (a bounded number in flight, so the scheduler's graph stays small for a continent) and skips tiles a
previous run of the same fingerprint already wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pystac
import xarray as xr

from geoplantnet.core.config import CubeConfig, MapConfig, RunConfig, redact
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile, overlaps
from geoplantnet.core.hashing import fingerprint
from geoplantnet.inference.dense import InferenceError, TileGeometry, default_budget, predict_tile, tile_geometry
from geoplantnet.inference.points import predict_tile_points
from geoplantnet.models.peers import PeerSpec, is_peer_file, load_peer
from geoplantnet.runs.context import streaming
from geoplantnet.runs.tiles import TiledRun, TileOutput, produce_tiles
from geoplantnet.runtime.cluster import require_resources, task_resources
from geoplantnet.storage import tiles as tile_store
from geoplantnet.storage.store import default_encoding, preflight, storage_options_for

# torch, distributed and stackstac are imported where a model is read or run, a window read or a cluster used: a
# command refuses bad input without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    import torch
    from distributed import Client

    from geoplantnet.models.species_net import ModelSpec, SpeciesNet

log = logging.getLogger(__name__)


class MapError(GeoplantnetError):
    """A map production that cannot start or a tile that failed (one line naming the tile)."""


# -- inputs read by tile tasks


def _touching(items: Sequence[Mapping[str, Any]], footprints: Sequence[Any], grid: Grid) -> list[pystac.Item]:
    return [
        pystac.Item.from_dict(dict(item))
        for item, fp in zip(items, footprints, strict=True)
        if fp is None or overlaps(fp, grid.bounds)
    ]


@dataclass(frozen=True)
class ReadSettings:
    """The settings a tile read needs (not the whole run configuration: tasks carry what they use)."""

    cube: CubeConfig  # Sentinel-2 bands, masking, compositing, indices, chunking

    @classmethod
    def of(cls, cfg: RunConfig) -> ReadSettings:
        return cls(cfg.cube)


@dataclass(frozen=True)
class MapSources:
    """What tile tasks read; picklable (items as dicts). ``seasons`` is the run's composite time axis: a tile whose
    items miss a season still gets that season, as NaN, like a cloudy season in training."""

    settings: ReadSettings
    s2_items: tuple[dict, ...] | None
    env_items: tuple[dict, ...] | None
    seasons: tuple[np.datetime64, ...] | None
    # item footprints in the grid's CRS, once per run rather than once per tile and item
    s2_footprints: tuple[Any, ...]
    env_footprints: tuple[Any, ...]

    @classmethod
    def from_items(
        cls,
        cfg: RunConfig,
        s2_items: Sequence[pystac.Item] | None,
        env_items: Sequence[pystac.Item],
        seasons: Sequence[np.datetime64] | None = None,
    ) -> MapSources:
        """Sources for a run. The season axis is ``seasons`` when given (a refresh: the first year's periods shifted
        to its year), else the region-wide composite's: every period between the first and the last acquisition
        (:func:`geoplantnet.sources.cube.seasonal_composite` resamples the same way)."""
        from geoplantnet.sources.cube import item_footprint

        if seasons is not None:
            seasons = tuple(np.asarray(seasons, dtype="datetime64[ns]"))
        elif s2_items:
            times = pd.DatetimeIndex([pd.Timestamp(item.datetime).tz_convert(None) for item in s2_items])
            bins = pd.Series(1, index=times.sort_values()).resample(cfg.cube.composite).count()
            seasons = tuple(bins.index.values.astype("datetime64[ns]"))
        epsg = cfg.grid.epsg
        s2 = tuple(i.to_dict() for i in s2_items) if s2_items else None
        env = tuple(i.to_dict() for i in env_items)
        return cls(
            ReadSettings.of(cfg),
            s2,
            env,
            seasons,
            tuple(item_footprint(i, epsg) for i in s2 or ()),
            tuple(item_footprint(i, epsg) for i in env),
        )

    def read(
        self, spec: ModelSpec, geom: TileGeometry, map_grid: Grid, cube_grid: Grid | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The raw input windows of one tile: Sentinel-2 composite (season, band, y, x), environment (var, y, x);
        read on the run's grids only, NaN where a window leaves them (:meth:`TileGeometry.read_window`)."""
        patch = env = None
        if geom.cube_window is not None:
            if not self.s2_items or cube_grid is None:
                raise InferenceError("the model takes Sentinel-2 inputs but the run has no Sentinel-2 items")
            bands = self.band_names(spec.bands)
            lead = (len(self.seasons or ()), len(bands))
            patch = geom.read_window(cube_grid, "cube", lambda window: self.composite(window, bands), lead)
        if geom.env_window is not None:
            n_vars = spec.modalities["env"][0] - (1 if spec.mask_channels else 0)
            names = list(spec.variables) if spec.variables else [f"var{i}" for i in range(n_vars)]
            check = spec.variables is not None
            env = geom.read_window(
                map_grid, "env", lambda window: self.environment(window, names, check=check), (n_vars,)
            )
        return patch, env

    def band_names(self, trained: Sequence[str] | None = None) -> list[str]:
        """The composite's channels: a model's (``trained``) or the run's bands then indices."""
        cube = self.settings.cube
        return list(trained) if trained else [*cube.bands, *cube.indices]

    def environment(self, window: Grid, names: Sequence[str], *, check: bool = True) -> np.ndarray:
        """The environmental predictors ``names`` (var, y, x) on ``window`` as models take them
        (:func:`geoplantnet.sources.predictors.model_stack`; NaN where no raster covers it). ``check``: refuse
        rasters whose variables are not ``names`` in that order."""
        from geoplantnet.sources import predictors

        items = _touching(self.env_items or (), self.env_footprints, window)
        if not items:
            return np.full((len(names), window.height, window.width), np.nan, np.float32)
        stack = predictors.model_stack(items, window, chunk=max(window.height, window.width))
        if check:
            _check_names("environmental variables", names, stack["var"].values, "rasters")
        return stack.compute(scheduler="sync").values.astype(np.float32)

    def composite(self, window: Grid, bands: Sequence[str]) -> np.ndarray:
        """The seasonal composite (season, band, y, x) on ``window``, channels ``bands`` (checked against the
        imagery), seasons the run's (NaN where a season or the imagery is missing)."""
        from geoplantnet.jobs.composites import cube_composites

        shape = (len(self.seasons or ()), len(bands), window.height, window.width)
        items = _touching(self.s2_items or (), self.s2_footprints, window)
        if not items:
            return np.full(shape, np.nan, np.float32)
        comp = cube_composites(items, self.settings.cube, window)
        _check_names("Sentinel-2 bands", bands, comp["band"].values, "imagery")
        comp = comp.reindex(time=list(self.seasons or ()))
        return comp.compute(scheduler="sync").values.astype(np.float32)


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... {len(names) - limit} more' if len(names) > limit else ''}]"


def _check_names(what: str, trained: Sequence[str] | None, given: Sequence[Any], source: str) -> None:
    """Refuse inputs whose channel names are not the model's, in its order; the message says what differs."""
    given = [str(g) for g in given]
    if trained is None or list(trained) == given:
        return
    missing = [n for n in trained if n not in given]
    extra = [n for n in given if n not in trained]
    diff = [f"missing {_listed(missing)}"] if missing else []
    diff += [f"not in the model {_listed(extra)}"] if extra else []
    raise InferenceError(
        f"the model was trained on {what} {_listed(list(trained))}, the run's {source} give {_listed(given)} "
        f"({'; '.join(diff) or 'the same names in another order'})"
    )


# -- the model, once per worker process


def cached_model(ref: ModelRef, device: str) -> tuple[Any, ModelSpec | PeerSpec, int]:
    """The model and spec of ``ref`` on ``device`` kept by this worker process (loaded on first use), and how many
    loads the process has done. Pinned by the sha256 the driver fingerprinted, so a model file replaced during a run
    is refused rather than mixed into a map."""
    from geoplantnet.runtime.worker_cache import pinned
    from geoplantnet.training.train import resolve_device

    dev = resolve_device(device)

    def load() -> tuple[tuple[Any, ModelSpec | PeerSpec], str]:
        model, spec, raw = read_model(ref.url, dev)
        return (model, spec), hashlib.sha256(raw).hexdigest()

    (model, spec), loads = pinned("species-model", ref.url, ref.sha256, str(dev), load, "model file")
    return model, spec, loads


def read_model(url: str, device: str | torch.device = "cpu") -> tuple[SpeciesNet | Any, ModelSpec | PeerSpec, bytes]:
    """Load a model file from a path or any fsspec URL (``s3://...``): the species network (``.pt``) or a point-value
    peer fitted by ``sdm`` (``.peer``: MaxEnt, random forest; told apart by content, not name); also its bytes."""
    from geoplantnet.training.train import ModelFileError, load_model

    try:
        with fsspec.open(url, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{url}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{url}: a folder, not a model file") from None
    if is_peer_file(raw):
        peer, peer_spec = load_peer(io.BytesIO(raw), name=url)
        return peer, peer_spec, raw
    model, spec = load_model(io.BytesIO(raw), device, name=url)
    return model, spec, raw


@dataclass(frozen=True)
class ModelFile:
    """A species model file read and checked on the driver: its spec and the sha256 of its bytes. Read before a
    job's inputs are made or a cluster starts, so a missing or corrupt model fails first."""

    url: str
    spec: ModelSpec | PeerSpec
    sha256: str

    @classmethod
    def read(cls, url: str) -> ModelFile:
        """Read ``url`` (:func:`read_model`; one-line :class:`ModelFileError` when it cannot be used)."""
        _, spec, raw = read_model(url)
        return cls(url, spec, hashlib.sha256(raw).hexdigest())

    @classmethod
    def of(cls, model: str | ModelFile) -> ModelFile:
        """``model`` itself, or the file at that URL read."""
        return model if isinstance(model, ModelFile) else cls.read(model)


# -- one tile


@dataclass(frozen=True)
class ModelRef:
    """A model file and the sha256 the driver read from it."""

    url: str
    sha256: str


@dataclass(frozen=True)
class TileCompute:
    """How a tile is predicted: device, precision and the memory of one forward pass."""

    device: str
    mixed_precision: bool
    batch_mb: int  # GPU
    cpu_batch_mb: int

    @classmethod
    def of(cls, settings: MapConfig) -> TileCompute:
        return cls(settings.device, settings.mixed_precision, settings.batch_mb, settings.cpu_batch_mb)


@dataclass(frozen=True)
class TileInputs:
    """A tile's raw input windows as :meth:`SpeciesPredictor.read` gives them."""

    geom: TileGeometry
    patch: np.ndarray | None
    env: np.ndarray | None
    read_s: float
    model_loads: int
    budget_bytes: int  # the strip budget of every pass over them (a GPU's free memory is read once)


@dataclass(frozen=True)
class SpeciesPredictor:
    """How a tile's species codes are predicted: the model, the inputs, the grids and the compute settings. What
    :func:`map_tile` and a fused indicator tile (:mod:`geoplantnet.jobs.indicators`) share, so both give the same
    codes for the same tile."""

    model: ModelRef
    sources: MapSources
    map_grid: Grid
    cube_grid: Grid | None
    compute: TileCompute
    point_model: bool = False  # a MaxEnt / forest peer: CPU only, never waits for a GPU worker

    def predict(self, tile: Tile) -> tuple[np.ndarray, dict[str, Any]]:
        """The uint8 codes (species, y, x) of ``tile`` (read its input windows, run the model) and the timings
        (``read_s``, ``model_s``), device, process and model loads (runs on a worker)."""
        return self.forward(self.read(tile))

    def read(self, tile: Tile) -> TileInputs:
        """The raw input windows of ``tile`` (read once; :meth:`forward` may run on them several times)."""
        t0 = time.perf_counter()
        model, spec, loads = cached_model(self.model, self.compute.device)
        geom = tile_geometry(spec, tile, self.map_grid, self.cube_grid)
        patch, env = self.sources.read(spec, geom, self.map_grid, self.cube_grid)
        budget = 0
        if not isinstance(spec, PeerSpec):  # fixed per tile: every pass over these inputs uses the same strips
            budget = default_budget(next(model.parameters()).device, self.compute.batch_mb, self.compute.cpu_batch_mb)
        return TileInputs(geom, patch, env, round(time.perf_counter() - t0, 3), loads, budget)

    def forward(self, inputs: TileInputs, *, dropout_seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The model on a tile's inputs: uint8 codes (species, y, x) and timings. ``dropout_seed``: one Monte-Carlo
        dropout draw (:func:`geoplantnet.models.mc_dropout.mc_dropout`) instead of the map's values."""
        from geoplantnet.models.mc_dropout import exclusive, mc_dropout

        t1 = time.perf_counter()
        model, spec, _ = cached_model(self.model, self.compute.device)
        geom, patch, env = inputs.geom, inputs.patch, inputs.env
        if isinstance(spec, PeerSpec):  # MaxEnt / forest: per-pixel feature rows, as at the training points (CPU)
            device = "cpu"
            codes = predict_tile_points(model, spec, geom, patch, env)
        else:
            device = next(model.parameters()).device
            # the model is shared by the worker's threads: a pass never runs inside another thread's draw
            draw = exclusive() if dropout_seed is None else mc_dropout(model, dropout_seed)
            with draw:
                codes = predict_tile(
                    model,
                    spec,
                    geom,
                    patch,
                    env,
                    budget_bytes=inputs.budget_bytes,
                    mixed_precision=self.compute.mixed_precision,
                )
        t2 = time.perf_counter()
        info = {"read_s": inputs.read_s, "model_s": round(t2 - t1, 3), "device": str(device), "pid": os.getpid()}
        return codes, {**info, "model_loads": inputs.model_loads}

    def resources(self, client: Client) -> dict[str, float] | None:
        """The resources a tile task of this predictor asks for (checked to exist), with the per-worker model cache
        registered: a GPU when the cluster has them, nothing for a point-value peer."""
        from geoplantnet.runtime.worker_cache import WorkerCachePlugin

        resources = None if self.point_model else task_resources(client)
        if resources:
            require_resources(client, resources)
        client.register_plugin(WorkerCachePlugin())
        return resources


@dataclass(frozen=True)
class TileJob:
    """Everything a map tile task needs besides its tile (sent with each task; items are the only bulky part)."""

    predictor: SpeciesPredictor
    output: TileOutput


def map_tile(job: TileJob, tile: Tile) -> dict[str, Any]:
    """Read, predict and write one tile; returns its timings (runs on a worker)."""
    codes, info = job.predictor.predict(tile)
    t2 = time.perf_counter()
    loads = info.pop("model_loads")
    out = job.output
    tile_store.write_tile(
        out.url, "probability", tile, codes, run=out.run, info=info, storage_options=out.storage_options
    )
    return {
        **info,
        "tile": tile.id,
        "pixels": tile.height * tile.width,
        "write_s": round(time.perf_counter() - t2, 3),
        "model_loads": loads,
    }


# -- the driver


def check_inputs(spec: ModelSpec, sources: MapSources, cfg: RunConfig) -> None:
    """On the driver, before anything is written: the run's inputs are the ones the model was trained on (the same
    Sentinel-2 bands and indices, the same seasons, the same environmental variables in the same order)."""
    from geoplantnet.sources import predictors

    takes_s2 = "patch" in spec.modalities or "series" in spec.modalities
    if takes_s2 and not sources.s2_items:
        raise InferenceError(
            f"the model was trained on Sentinel-2 bands {_listed(spec.bands or [])} but the run has no Sentinel-2 "
            "items (--with-s2 / inputs.sentinel2 with stac.url, or a search that found nothing)"
        )
    if takes_s2:
        bands = [*cfg.cube.bands, *cfg.cube.indices]
        _check_names("Sentinel-2 bands", spec.bands, bands, "settings (cube.bands + cube.indices)")
        seasons = spec.modalities["series"][-1] if "series" in spec.modalities else None
        if seasons is not None and seasons != len(sources.seasons or ()):
            raise InferenceError(
                f"the model was trained on {seasons} composite periods, the run's imagery spans "
                f"{len(sources.seasons or ())} (cube.composite={cfg.cube.composite}, cube.datetime={cfg.cube.datetime})"
            )
    if "env" in spec.modalities:
        if not sources.env_items:
            raise InferenceError(
                f"the model was trained on environmental variables {_listed(spec.variables or [])} but the run has "
                "no rasters (--rasters / inputs.rasters)"
            )
        grid = cfg.grid.grid()
        probe = Grid(grid.resolution, grid.left, grid.top, 1, 1, grid.epsg)  # metadata only: nothing is read
        names = predictors.model_stack([pystac.Item.from_dict(dict(i)) for i in sources.env_items], probe)["var"]
        _check_names("environmental variables", spec.variables, names.values, "rasters")


def run_parts(model_sha256: str, cfg: RunConfig, sources: MapSources) -> dict[str, str]:
    """What makes a map: the model file, the grids, the cube settings, the tiling, the input items (named, so a
    refusal can say which differs)."""
    map_grid = cfg.grid.grid()
    items = [i["id"] for i in (sources.s2_items or ())] + [i["id"] for i in (sources.env_items or ())]
    return {
        "model": model_sha256[:12],
        "grid": map_grid.label(),
        "cube": fingerprint(cfg.cube.model_dump(mode="json"))[:12] if sources.s2_items else "none",
        "tiling": f"tile={cfg.map.tile} species_chunk={cfg.map.species_chunk}",
        "inputs": fingerprint(sorted(items))[:12],
    }


@dataclass
class MapSummary:
    """What a map run did: the store, its run fingerprint, tiles computed and skipped, speed, where tiles ran; and,
    from :func:`run_map`, the model used and how it was trained if it was trained by the run."""

    store: str
    run: str
    tiles: int
    tiles_computed: int
    tiles_skipped: int
    species: int
    shape: list[int]
    pixels_per_second: float | None
    model_seconds: float
    read_seconds: float
    devices: list[str]
    model_loads: dict[str, int]  # worker process id -> model loads (1 each: the model is kept per process)
    resources: dict[str, float] | None
    seconds: float
    model: str | None = None
    trained: dict[str, Any] | None = None
    inputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values (what the command prints)."""
        return asdict(self)


def produce_map(
    client: Client,
    cfg: RunConfig,
    model_url: str,
    sources: MapSources,
    store_url: str,
    *,
    progress: bool = True,
    overwrite: bool = False,
    plan: MapPlan | None = None,
    year: int | None = None,
) -> MapSummary:
    """Write ``species.zarr`` at ``store_url`` for the grid of ``cfg``, resuming an interrupted run of the same
    fingerprint; a store of another run is replaced only with ``overwrite``, anything else is never touched.
    ``plan``: the caller's :func:`plan_map` of the same arguments, when it already made one."""
    t_start = time.perf_counter()
    # the model read and checked against the inputs, the run fingerprinted: nothing written yet
    plan = plan or plan_map(cfg, model_url, sources, store_url, year)
    resources = plan.job.predictor.resources(client)
    out = plan.job.output
    grid = plan.job.predictor.map_grid
    layout = with_thresholds(
        *tile_store.species_template(
            grid, plan.spec.species, plan.spec.species_name, cfg.map.tile, cfg.map.species_chunk
        ),
        plan.spec,
    )
    done = produce_tiles(
        client,
        map_tile,
        plan.job,
        output=out,
        grid=grid,
        tile=cfg.map.tile,
        layout=layout,
        product="species",
        parts=plan.parts,
        settings=streaming(cfg),
        provenance=cfg.to_attrs(),
        attrs=plan.attrs,
        overwrite=overwrite,
        resources=resources,
        progress=progress,
        error=MapError,
        year=year,
    )
    return _summary(plan, done, resources, time.perf_counter() - t_start)


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


@dataclass(frozen=True)
class MapPlan:
    """A map run decided on the driver before anything is written: the model's spec, the run's fingerprint parts,
    the store's attrs and the job every tile task receives."""

    spec: ModelSpec | PeerSpec
    parts: dict[str, str]
    attrs: dict[str, str]
    job: TileJob


def plan_predictor(
    cfg: RunConfig, model: str | ModelFile, sources: MapSources
) -> tuple[SpeciesPredictor, ModelSpec | PeerSpec, dict[str, str]]:
    """Read the model (unless given read) and check the run's inputs against it: the predictor tile tasks carry
    (pinned by the model file's sha256), the model's spec and the attributes naming it (``model_file``,
    ``model_sha256``, ``model_version``, ``model_spec``)."""
    model = ModelFile.of(model)
    model_url, spec, sha = model.url, model.spec, model.sha256
    check_inputs(spec, sources, cfg)
    predictor = SpeciesPredictor(
        model=ModelRef(model_url, sha),
        sources=sources,
        map_grid=cfg.grid.grid(),
        cube_grid=cfg.grid.grid(cfg.cube.resolution) if sources.s2_items else None,
        compute=TileCompute.of(cfg.map),
        point_model=isinstance(spec, PeerSpec),
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


def plan_map(
    cfg: RunConfig, model: str | ModelFile, sources: MapSources, store_url: str, year: int | None = None
) -> MapPlan:
    """Read the model (unless given read), check the run's inputs against it, and fingerprint the run
    (:func:`run_parts`); with ``year`` the run writes that year of a series (``geoplantnet refresh``)."""
    predictor, spec, attrs = plan_predictor(cfg, model, sources)
    parts = run_parts(predictor.model.sha256, cfg, sources)
    output = TileOutput.of(store_url, parts, storage_options_for(store_url, cfg.store), year=year)
    return MapPlan(spec, parts, attrs, TileJob(predictor, output))


def _summary(plan: MapPlan, done: TiledRun, resources: dict[str, float] | None, seconds: float) -> MapSummary:
    results = done.results
    grid = plan.job.predictor.map_grid
    return MapSummary(
        store=plan.job.output.url,
        run=plan.job.output.run,
        tiles=len(done.tiles),
        tiles_computed=len(results),
        tiles_skipped=len(done.tiles) - len(done.todo),
        species=len(plan.spec.species),
        shape=[len(plan.spec.species), grid.height, grid.width],
        pixels_per_second=done.pixels_per_second,
        model_seconds=round(sum(r["model_s"] for r in results), 2),
        read_seconds=round(sum(r["read_s"] for r in results), 2),
        devices=sorted({r["device"] for r in results}),
        model_loads=done.model_loads(),
        resources=resources,
        seconds=round(seconds, 1),
    )


def _asset_state(item: Mapping[str, Any]) -> list[Any]:
    """Each local asset's size and modification time: a file replaced under the same name changes them."""
    from geoplantnet.sources.stac_items import local_path

    state: list[Any] = []
    for key, asset in sorted(item.get("assets", {}).items()):
        path = local_path(asset.get("href", ""))
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(path) if path else None
            state.append([key, st.st_size, st.st_mtime_ns] if st else [key, asset.get("href")])
    return state


def inputs_digest(inputs: Any) -> str:
    """A hash of a run's training inputs by content: the observation records, every item and its files' state."""
    records = pd.util.hash_pandas_object(inputs.observations.records, index=False).to_numpy().tobytes()
    items = []
    for item in [*(inputs.env_items or ()), *(inputs.s2_items or ())]:
        d = item.to_dict()
        # not links (they carry the serving API's address, a new port each run) nor server-set timestamps
        props = {k: v for k, v in d.get("properties", {}).items() if k not in ("created", "updated")}
        items.append([d.get("id"), d.get("collection"), props, d.get("assets"), _asset_state(d)])
    return fingerprint(records, items)


def _training_key(cfg: RunConfig, inputs: Any) -> str:
    parts = {k: getattr(cfg, k).model_dump(mode="json") for k in ("grid", "cube", "model", "train", "validation")}
    return fingerprint(parts, inputs_digest(inputs))


def ensure_model(cfg: RunConfig, inputs: Any, client: Client) -> tuple[str, dict[str, Any] | None]:
    """A model for the map: trained on the region's observations, or reused from an earlier run with the same
    data (by content), model and training settings (``<workdir>/map-models/<hash>``). Returns its path and, if
    trained now, how."""
    from pathlib import Path

    from geoplantnet.jobs.sdm import train_map_model

    model_dir = Path(cfg.workdir) / "map-models" / _training_key(cfg, inputs)
    cached = model_dir / "model" / "map.pt"
    if cached.exists():
        return str(cached), None
    result = train_map_model(cfg, inputs, model_dir, client)
    return result.model_path, {"epochs": result.epochs_run, "best_epoch": result.best_epoch, "device": result.device}


def run_map(
    cfg: RunConfig,
    *,
    model: str | None = None,
    out: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> MapSummary:
    """The map job on the configured inputs (``cfg.inputs``: a user's rasters and/or Sentinel-2 from ``stac.url``;
    nothing configured: the virtual region), with the model ``model`` or ``map.model``, or one trained here on the
    configured observations and cached by configuration; then :func:`produce_map` on the configured cluster."""
    from geoplantnet.runs.inputs import plan_inputs
    from geoplantnet.runtime.cluster import connect
    from geoplantnet.storage.store import join

    model_url = model or cfg.map.model
    if model_url is None and not cfg.inputs.virtual and cfg.inputs.observations is None:
        raise MapError(
            "map needs a model for your inputs: pass --model FILE (or map.model), or --observations FILE "
            "(inputs.observations) to train one"
        )
    store_url = out or join(cfg.store.root, "species.zarr")
    storage_options = storage_options_for(store_url, cfg.store)
    # refuse a user's folder, a store being written, another product's store before minutes of generation and training
    preflight(store_url, storage_options, product="species", overwrite=overwrite)
    # the given model, then the user's files (observations only to train: a given model is applied to the predictors
    # alone), all read before the virtual region is generated or imagery searched
    model_file = ModelFile.read(model_url) if model_url is not None else None
    inputs = plan_inputs(cfg, observations=model_url is None).load(progress=progress)
    sources = MapSources.from_items(cfg, inputs.s2_items, inputs.env_items)
    # inputs that do not fit a given model: refused before a cluster starts
    plan = plan_map(cfg, model_file, sources, store_url) if model_file is not None else None
    trained = None
    with connect(cfg.cluster) as client:
        if model_url is None:
            model_url, trained = ensure_model(cfg, inputs, client)
        summary = produce_map(
            client, cfg, model_url, sources, store_url, progress=progress, overwrite=overwrite, plan=plan
        )
    return replace(summary, model=model_url, trained=trained, inputs=inputs.notes)
