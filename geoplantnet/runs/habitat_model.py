"""The habitat map's own model, made for a run (``habitat-map`` with ``habitats.map_model`` other than ``folder``):
the species model's cross-fitted predicted assemblages and the point predictors at the labelled plots, three forests
compared on the same spatial folds, the chosen one fitted on every plot and saved as a classifier folder
(:mod:`geoplantnet.validation.map_models`, :mod:`geoplantnet.models.map_forest`).

The cross-fit (the expensive part: one species network per fold) is cached under ``<workdir>/map-models/<key>/``
beside the map's species model, by the same key (training settings and inputs by content); the workdir may be an
object-store URL.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplantnet.core.config import ConfigError, RunConfig
from geoplantnet.inference.map_inputs import PixelPredictors, peer_spec
from geoplantnet.models.map_forest import MapForest
from geoplantnet.samples.plots import Plots, eunis_ancestor
from geoplantnet.storage.workdir import scratch
from geoplantnet.validation.map_models import (
    PlotAssemblages,
    choose_map_model,
    compare_map_models,
    cross_fitted_assemblages,
)

if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.models.peers import PeerSpec
    from geoplantnet.models.species_net import ModelSpec
    from geoplantnet.runs.context import RunContext


def species_spec(ctx: RunContext, species_model: str) -> ModelSpec | PeerSpec:
    """The spec of the species model file ``species_model`` (the map's: its inputs and calibration), read with the
    store's options when it is a URL (a model cached under an object-store workdir)."""
    return ctx.model_file(species_model).spec


def map_predictors(ctx: RunContext, spec: ModelSpec | PeerSpec, inputs: Any) -> PixelPredictors:
    """The pixels' point predictors of the species model of ``spec`` (its inputs, read by the run's map reader)."""
    cfg = ctx.cfg
    sources = ctx.sources(inputs)
    cube_grid = cfg.grid.grid(cfg.cube.resolution) if sources.s2_items else None
    return PixelPredictors(sources, peer_spec(spec), cfg.grid.grid(), cube_grid)


def labelled_plots(cfg: RunConfig) -> Plots:
    """The plots with one habitat code (cut to ``habitats.level``): the virtual region's, or ``habitats.plots`` (its
    x/y in the grid's CRS)."""
    if cfg.habitats.plots is not None:
        from geoplantnet.samples.plots import read_plots

        plots = read_plots(cfg.habitats.plots, cfg.habitats)
    else:
        from geoplantnet.runs.inputs import virtual_plots

        plots, _ = virtual_plots(cfg)
    plots = plots.subset(plots.labelled)
    plots.habitat = np.asarray([eunis_ancestor(str(h), cfg.habitats.level) for h in plots.habitat], dtype=object)
    return plots


def plot_assemblages(
    ctx: RunContext, client: Client | None, inputs: Any, spec: ModelSpec | PeerSpec
) -> PlotAssemblages:
    """The species model's cross-fitted assemblages at the surveys, computed once per species model (cached raw),
    calibrated as the map's model ``spec`` calibrates the pixels of ``species.zarr``."""
    return _raw_assemblages(ctx, client, inputs).calibrated(spec.calibration, list(spec.species))


def _raw_assemblages(ctx: RunContext, client: Client | None, inputs: Any) -> PlotAssemblages:
    work = ctx.workdir
    folder = ("map-models", ctx.species_training_key(inputs), "crossfit")
    try:
        cached = work.read_bytes(*folder, "assemblages.npz")
    except FileNotFoundError:
        cached = None
    if cached is not None:
        with np.load(io.BytesIO(cached), allow_pickle=False) as z:
            return PlotAssemblages(z["x"], z["y"], [str(s) for s in z["species"]], z["prob"], z["folds"])
    # the networks' folds under a local folder (the workdir's own, or this process's scratch for an object-store
    # workdir); the assemblages written whole under the workdir (renamed into place, or one PUT)
    local = work.path(*folder) if work.local else scratch(*folder)
    made = cross_fitted_assemblages(ctx.species_training, inputs, local, client)
    buf = io.BytesIO()
    np.savez(buf, x=made.x, y=made.y, species=np.asarray(made.species), prob=made.prob, folds=made.folds)
    work.write_bytes(buf.getvalue(), *folder, "assemblages.npz")
    return made


def train_map_model(
    ctx: RunContext, client: Client, species_model: str, folder: str
) -> tuple[str, dict[str, Any], PixelPredictors]:
    """Fit the map's model (``habitats.map_model``; ``auto``: the best of the three on the spatial folds) at the
    labelled plots and save it in ``folder``; returns the folder, what the choice says, and the pixels' point
    predictors (what the map reads for a model that takes them)."""
    cfg = ctx.cfg
    inputs = ctx.inputs()
    plots = labelled_plots(cfg)
    spec = species_spec(ctx, species_model)  # a missing or unreadable model fails before the cross-fit
    predictors = map_predictors(ctx, spec, inputs)
    oof = plot_assemblages(ctx, client, inputs, spec)
    grid = cfg.grid.grid()
    A, folds = oof.at(plots.x, plots.y, within=grid.resolution * (cfg.train.nearest_valid_cells + 1))
    X = predictors.at(plots.x, plots.y, cfg.map.tile)
    ok = (folds >= 0) & np.isfinite(A).all(axis=1) & predictors.has_data(X)
    if ok.sum() < 2 * cfg.validation.folds or len(set(plots.habitat[ok])) < 2:
        raise ConfigError(
            f"{int(ok.sum())} labelled plots have a cross-fitted assemblage and predictor data: too few to train the "
            "habitat map's model (set habitats.map_model=folder to map a classifier folder)"
        )
    labels = plots.habitat[ok].astype(str)
    trees, seed = 300, cfg.habitats.seed
    scores = compare_map_models(A[ok], X[ok], labels, folds[ok], trees=trees, seed=seed)
    chosen, info = choose_map_model(scores, cfg.habitats.map_model)
    info["plots"] = int(ok.sum())
    info["plots_without_crossfit"] = int((folds < 0).sum())
    model = MapForest.fit(
        chosen,
        A[ok],
        X[ok],
        labels,
        species=oof.species,
        features=predictors.features,
        folds=folds[ok],
        trees=trees,
        seed=seed,
    )
    model.info = info
    model.save(folder)
    return folder, info, predictors
