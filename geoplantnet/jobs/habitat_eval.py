"""``habitat-map --evaluate``: the shipped habitat map scored against the virtual region's true habitats, beside the
direct random forest and, where the map's own model was trained, the cascade alone (a forest on the cross-fitted
predicted assemblages only) (:mod:`geoplantnet.evaluation.habitats`); this driver gathers the region's plots, truth,
inputs and the species model's predictors."""

from __future__ import annotations

from typing import Any

import numpy as np

from geoplantnet.core.config import RunConfig
from geoplantnet.evaluation.habitats import (
    assemblage_forest_map,
    compare_with_truth,
    direct_forest_map,
    map_codes,
    truth_codes,
)


def evaluate_habitat_map(
    cfg: RunConfig, habitat_url: str, species_model_url: str, species_url: str | None = None, level: int = 3
) -> dict[str, Any]:
    """The shipped map, the direct forest and (with ``species_url`` and the map's own model trained) the cascade alone
    scored against the virtual region's true habitats (same pixels)."""
    from geoplantnet.runs.context import RunContext
    from geoplantnet.runs.habitat_model import labelled_plots, map_predictors, plot_assemblages, species_spec
    from geoplantnet.runs.inputs import virtual_plots

    plots, truth_url = virtual_plots(cfg)
    shipped, x, y = map_codes(habitat_url)
    truth = truth_codes(truth_url, x, y)
    ctx = RunContext(cfg)
    inputs = ctx.inputs()
    spec = species_spec(ctx, species_model_url)
    predictors = map_predictors(ctx, spec, inputs)
    maps = {"map": shipped, "direct_forest": direct_forest_map(predictors, cfg.map.tile, plots, level)}
    if species_url is not None and cfg.habitats.map_model != "folder":
        oof = plot_assemblages(ctx, None, inputs, spec)  # cached by the training: no cluster needed
        labelled = labelled_plots(cfg)
        A, folds = oof.at(
            labelled.x, labelled.y, within=predictors.grid.resolution * (cfg.train.nearest_valid_cells + 1)
        )
        ok = (folds >= 0) & np.isfinite(A).all(axis=1)
        labels = labelled.habitat[ok].astype(str)
        maps["cascade_alone"] = assemblage_forest_map(species_url, oof.species, A[ok], labels, seed=cfg.habitats.seed)
    return compare_with_truth(maps, truth, training_plots=int(plots.labelled.sum()), level=level)
