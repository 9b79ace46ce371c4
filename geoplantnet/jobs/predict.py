"""Point predictions: a trained species model applied at a table of points, writing one row per point.

The model's inputs are extracted at the points exactly as training extracted them (:func:`geoplantnet.samples.
extraction.extract_samples` into a temporary training set, then :func:`geoplantnet.training.train.predict` with the
model's own normalisation), so a point predicted here and the same place in a training set get the same inputs. A
map pixel is the prediction at its centre: predicting at a pixel's centre gives the map's value (within one uint8
step); a point elsewhere in the pixel may see other Sentinel-2 pixels (the cube is finer than the map).

Output (CSV or Parquet, by the extension of ``--out``): the id column (``--id`` when the points file has it, else
``point``: the row number), the point's coordinates as given, then one column per species id (the model's species
order) holding its probability in [0, 1]. Points outside the grid, or where the predictors have no data (the map's
no-data rule), get NaN and are counted in one warning.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geoplantnet.core.config import RunConfig
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import to_grid_crs
from geoplantnet.runs.inputs import Inputs
from geoplantnet.samples.observations import Samples, SpeciesVocabulary
from geoplantnet.storage.outputs import claim_file, write_file

# torch and stackstac are imported where the points are predicted: a bad points table is refused without them
if TYPE_CHECKING:
    from geoplantnet.models.species_net import ModelSpec

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
KIND = "prediction table"


class PointsError(InputError):
    """A points file that cannot be read (one line naming the file and what is wrong)."""


@dataclass
class Points:
    """The points to predict at: the columns written back (id and coordinates as given) and grid-CRS x, y."""

    table: pd.DataFrame
    x: np.ndarray
    y: np.ndarray


@dataclass
class PredictSummary:
    """What a predict run wrote."""

    out: str
    model: str
    points: int
    species: int
    no_data: int  # points outside the grid or without predictor data: NaN rows
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values (what the command prints)."""
        return asdict(self)


def read_points(path: Path, cfg: RunConfig, id_column: str = "id") -> Points:
    """Points from a CSV (columns ``inputs.x``/``inputs.y`` in ``inputs.crs``) or a (Geo)Parquet file (its geometry,
    any CRS; or the same columns), in the grid's CRS."""
    where, spec = str(path), cfg.inputs
    epsg = cfg.grid.epsg
    try:
        parquet = path.suffix.lower() in (".parquet", ".geoparquet")
        table = _read_parquet(path, epsg) if parquet else pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}"
        raise PointsError(f"{where}: cannot read points ({reason})") from None
    if "_grid_x" in table:  # GeoParquet: coordinates from the geometry
        xs, ys = table.pop("_grid_x").to_numpy(float), table.pop("_grid_y").to_numpy(float)
        coords = ["x", "y"]
    else:
        missing = [c for c in (spec.x, spec.y) if c not in table.columns]
        if missing:
            raise PointsError(f"{where}: no column {missing[0]!r} (columns: {list(table.columns)}; set --x/--y)")
        coords = [spec.x, spec.y]
        lon = pd.to_numeric(table[spec.x], errors="coerce").to_numpy(float)
        lat = pd.to_numeric(table[spec.y], errors="coerce").to_numpy(float)
        xs, ys = np.full(len(table), np.nan), np.full(len(table), np.nan)
        ok = np.isfinite(lon) & np.isfinite(lat)
        if ok.any():
            xs[ok], ys[ok] = to_grid_crs(lon[ok], lat[ok], spec.crs, epsg=epsg)
    if not len(table):
        raise PointsError(f"{where}: no points")
    ids = table[id_column] if id_column in table.columns else pd.Series(np.arange(len(table)), name="point")
    out = pd.DataFrame({ids.name: ids.to_numpy(), **{c: table[c].to_numpy() for c in coords}})
    return Points(out, xs, ys)


def _read_parquet(path: Path, epsg: int) -> pd.DataFrame:
    import geopandas as gpd

    try:
        frame = gpd.read_parquet(path)
    except ValueError:  # plain Parquet, no geometry metadata: coordinate columns, as in a CSV
        return pd.read_parquet(path)
    if frame.crs is None:
        raise PointsError(f"{path}: GeoParquet without a CRS")
    grid_geom = frame.geometry.to_crs(epsg)
    table = pd.DataFrame(frame.drop(columns=frame.geometry.name))
    table["x"], table["y"] = frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()
    table["_grid_x"], table["_grid_y"] = grid_geom.x.to_numpy(), grid_geom.y.to_numpy()
    return table


def _patch_size(spec: ModelSpec, modality: str, default: int) -> int:
    """The patch side the model was trained on (its spec, not this run's model.* settings)."""
    return int(spec.modalities[modality][-1]) if modality in spec.modalities else default


def predict_at_points(
    spec_model: tuple[Any, ModelSpec], cfg: RunConfig, inputs: Inputs, points: Points, client: Any, workdir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(points, species)`` (NaN where there is no data) and the mask of points with data."""
    from geoplantnet.jobs.composites import composites
    from geoplantnet.samples.extraction import extract_samples
    from geoplantnet.sources import predictors
    from geoplantnet.training.train import predict

    model, spec = spec_model
    grid = cfg.grid.grid()
    takes_s2 = "patch" in spec.modalities or "series" in spec.modalities
    takes_env = "env" in spec.modalities
    inside = grid.contains(points.x, points.y)
    if takes_s2:  # the cube grid may end a few metres before the map grid
        inside &= cfg.grid.grid(cfg.cube.resolution).contains(points.x, points.y)
    probs = np.full((len(points.x), len(spec.species)), np.nan, np.float32)
    rows = np.flatnonzero(inside)
    if not len(rows):
        return probs, inside
    n_species = len(spec.species)
    vocab = SpeciesVocabulary(tuple(spec.species), tuple(spec.species_name or spec.species))
    samples = Samples(
        points.x[rows], points.y[rows], np.full((len(rows), n_species), -1, np.int8), np.full(len(rows), "pa"), vocab
    )
    # the same lazy sources as training (jobs.sdm.prepare_samples): only the chunks holding points are read
    env = predictors.model_stack(inputs.env_items, grid, chunk=cfg.cube.chunk) if takes_env else None
    composite = composites(inputs.s2_items, cfg) if takes_s2 else None
    with tempfile.TemporaryDirectory(prefix="predict-", dir=workdir) as tmp:
        path = extract_samples(
            samples,
            grid,
            composite=composite,
            env=env,
            patch_size=_patch_size(spec, "patch", cfg.model.patch_size),
            env_patch_size=_patch_size(spec, "env", cfg.model.env_patch_size),
            out=str(Path(tmp) / "points.zarr"),
            client=client,
        )
        values = predict(model, spec, path, np.arange(len(rows)), cfg.train.batch_size)
        valid = _has_data(path, takes_env)
    probs[rows[valid]] = values[valid]
    inside[rows[~valid]] = False
    return probs, inside


def _has_data(path: str, takes_env: bool) -> np.ndarray:
    """The map's no-data rule at points (:func:`geoplantnet.inference.dense._valid`): every environmental variable
    finite at the point, or for a Sentinel-2-only model any finite value in the point's seasonal series."""
    from geoplantnet.samples.training_set import open_training_set

    ds = open_training_set(path)
    if takes_env:
        return np.isfinite(ds["env_point"].values).all(axis=1)
    return np.isfinite(ds["series"].values).any(axis=(1, 2))


def _write(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def run_predict(
    cfg: RunConfig,
    *,
    model: str | None,
    points: Path,
    out: Path,
    id_column: str = "id",
    progress: bool = True,
    overwrite: bool = False,
) -> PredictSummary:
    """Each species' probability at ``points`` from ``model`` (or ``map.model``) on the configured inputs
    (``cfg.inputs``; nothing configured: the virtual region), written to ``out`` (.csv or .parquet)."""
    from geoplantnet.jobs.mapping import MapSources, check_inputs, read_model
    from geoplantnet.runs.inputs import run_inputs
    from geoplantnet.runtime.cluster import connect

    t0 = time.perf_counter()
    model_url = model or cfg.map.model
    if model_url is None:
        raise InputError("predict needs a trained model: --model FILE (or map.model)")
    out = claim_file(out, KIND, overwrite=overwrite, suffixes=FORMATS)
    table = read_points(Path(points), cfg, id_column)
    net, spec, _ = read_model(model_url)
    inputs = run_inputs(cfg, observations=False, progress=progress)
    check_inputs(spec, MapSources.from_items(cfg, inputs.s2_items, inputs.env_items), cfg)  # the map's checks
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with connect(cfg.cluster) as client:
        probs, has_data = predict_at_points((net, spec), cfg, inputs, table, client, workdir)
    n_missing = int((~has_data).sum())
    if n_missing:
        log.warning(
            "%d of %d points are outside the grid or where the predictors have no data: their probabilities are NaN",
            n_missing,
            len(has_data),
        )
    frame = pd.concat([table.table, pd.DataFrame(probs, columns=list(spec.species))], axis=1)
    write_file(out, KIND, lambda path: _write(frame, path))  # beside its name, renamed: never half a table at out
    return PredictSummary(
        str(out), model_url, len(frame), len(spec.species), n_missing, round(time.perf_counter() - t0, 1)
    )
