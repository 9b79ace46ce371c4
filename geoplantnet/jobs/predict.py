"""Point predictions: a trained species model applied at a table of points, writing one row per point.

Any model file ``sdm`` or ``map`` writes: the species network (``.pt``) or a peer (``maxent.peer``,
``random_forest.peer``). The model's inputs are extracted at the points exactly as training extracted them
(:func:`geoplantnet.samples.extraction.extract_samples` into a temporary training set, then the network with its own
normalisation, or a peer on the point features it was fitted on; each calibrated as its file says, as the map is:
:func:`geoplantnet.training.species.predict_at_points`), so a point predicted here and the same place in a training
set get the same inputs. A map pixel is the prediction at its centre: predicting at a pixel's centre gives the map's
value (within one uint8 step); a point elsewhere in the pixel may see other Sentinel-2 pixels (the cube is finer than
the map).

A point whose cell has no environmental data (a coastal cell the rasters' warp left empty, while a neighbour has
data) is predicted at the centre of the nearest valid cell within ``train.nearest_valid_cells`` cells (default 1; 0
disables), as training moves its records there; the summary counts these points (``moved``).

Output (CSV or Parquet, by the extension of ``--out``): the id column (``--id`` when the points file has it, else
``point``: the row number), the point's coordinates as given, ``moved_m`` (how far the point was moved to be
predicted, in metres of the grid's CRS: 0 at its own place, the distance to the valid cell's centre when moved, empty
without a prediction), then one column per species id (the model's species order) holding its probability in [0, 1].
Points outside the grid, or where the predictors have no data even within that distance (the map's no-data rule),
get NaN and are counted in one warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from geoplantnet.core.config import RunConfig
from geoplantnet.core.errors import InputError
from geoplantnet.runs.context import RunContext
from geoplantnet.samples.points import Points, PointsError, read_points  # noqa: F401 (the command's names)
from geoplantnet.samples.tables import write_table
from geoplantnet.storage.outputs import claim_file, write_file

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
KIND = "prediction table"
MOVED = "moved_m"  # the column of how far each point was moved to the nearest valid cell


@dataclass
class PredictSummary:
    """What a predict run wrote."""

    out: str
    model: str
    points: int
    species: int
    no_data: int  # points outside the grid or without predictor data: NaN rows
    moved: int  # points predicted at the nearest valid cell: their own had no environmental data
    nearest_valid_cells: int  # how far (cells) a point may move: train.nearest_valid_cells, 0 without rasters
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values (what the command prints)."""
        return asdict(self)


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
    from geoplantnet.inference.reader import check_inputs
    from geoplantnet.inference.species import read_model
    from geoplantnet.runs.inputs import run_inputs

    t0 = time.perf_counter()
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    model_url = model or cfg.map.model
    if model_url is None:
        raise InputError("predict needs a trained model: --model FILE (or map.model)")
    out = claim_file(out, KIND, overwrite=overwrite, suffixes=FORMATS)
    table = read_points(Path(points), cfg.inputs, cfg.grid.epsg, id_column)
    net, spec, _ = read_model(model_url)
    inputs = run_inputs(cfg, observations=False, progress=progress)
    check_inputs(spec, ctx.sources(inputs), cfg.grid.grid())  # the map's checks
    # torch and stackstac are imported where the points are predicted: a bad points table is refused without them
    from geoplantnet.training.species import predict_at_points

    with ctx.client() as client:
        at = predict_at_points((net, spec), ctx.species_training, inputs, table, client, ctx.workdir)
    n_missing = int((~at.has_data).sum())
    if n_missing:
        log.warning(
            "%d of %d points are outside the grid or where the predictors have no data: their probabilities are NaN",
            n_missing,
            len(at.has_data),
        )
    probs = pd.DataFrame(at.probs, columns=list(spec.species))
    frame = pd.concat([table.table, pd.Series(at.moved_m, name=MOVED), probs], axis=1)
    write_file(out, KIND, lambda path: write_table(frame, path))  # beside its name, renamed: never half a table at out
    return PredictSummary(
        str(out),
        model_url,
        len(frame),
        len(spec.species),
        n_missing,
        at.moved,
        at.radius,
        round(time.perf_counter() - t0, 1),
    )
