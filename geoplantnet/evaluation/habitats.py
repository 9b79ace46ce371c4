"""How good a habitat map is on the virtual region: the shipped map (habitat.zarr: Pl@ntBERT's cascade or the map's
own model) against the region's true habitats, beside a direct per-pixel peer (a random forest from the same point
predictors as the species model straight to the habitat, fitted at the labelled plots) and, where the map's model was
trained on the cross-fitted assemblages, the cascade alone (a forest on the predicted assemblage only), so the report
shows what the cascade adds or costs. The peer's rows are :class:`geoplantnet.inference.map_inputs.PixelPredictors`,
the rows the species peers are fitted and mapped on; every pixel of the grid is predicted, tile by tile, on the
driver (an evaluation region).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import zarr
from sklearn.ensemble import RandomForestClassifier

from geoplantnet.inference.habitat import classify_pixels
from geoplantnet.inference.map_inputs import PixelPredictors
from geoplantnet.models.map_forest import MapForest
from geoplantnet.samples.plots import Plots, eunis_ancestor
from geoplantnet.storage.store import open_store
from geoplantnet.validation.habitat_maps import class_codes, cut_codes, score_habitat_map


def truth_codes(truth_url: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The reference habitat codes (y, x) of ``truth_url`` at the cell centres ``x``, ``y``."""
    truth = open_store(truth_url, mask_and_scale=False)
    index = truth["habitat"].sel(x=x, y=y, method="nearest").values
    return class_codes(index, [str(c) for c in truth["habitat_code"].values])


def map_codes(habitat_url: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A complete ``habitat.zarr`` as codes (y, x), ``""`` = no data; and its x, y."""
    ds = open_store(habitat_url, mask_and_scale=False)
    codes = class_codes(ds["habitat"].values, [str(c) for c in ds["habitat_code"].values])
    return codes, ds["x"].values, ds["y"].values


def direct_forest_map(
    predictors: PixelPredictors, tile_size: int, plots: Plots, level: int, *, trees: int = 300, seed: int = 0
) -> np.ndarray:
    """Habitat codes (y, x) of the grid from a random forest on the pixels' point predictors (``predictors``: the
    map's reader), fitted on the labelled ``plots`` (codes cut to ``level``); ``""`` where a pixel has no data."""
    rows = predictors.grid_rows(tile_size)  # an evaluation region: the grid's rows are held in memory
    grid = predictors.grid
    labelled = plots.subset(plots.labelled)
    inside = grid.contains(labelled.x, labelled.y)
    r, c = grid.index(labelled.x[inside], labelled.y[inside])
    X = rows[r, c]
    y = np.asarray([eunis_ancestor(str(h), level) for h in labelled.habitat[inside]], dtype=object)
    ok = predictors.has_data(X)
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1).fit(X[ok], y[ok].astype(str))
    flat = rows.reshape(-1, rows.shape[-1])
    valid = predictors.has_data(flat)
    out = np.full(flat.shape[0], "", dtype=object)
    if valid.any():
        out[valid] = forest.predict(flat[valid])
    return out.reshape(grid.height, grid.width)


def assemblage_forest_map(
    species_url: str, species: list[str], assemblage: np.ndarray, labels: np.ndarray, *, trees: int = 300, seed: int = 0
) -> np.ndarray:
    """The cascade alone, trained on what it sees: habitat codes (y, x) of a forest on the predicted assemblage only,
    fitted on the plots' cross-fitted ``assemblage`` (n, ``species``) to ``labels``, applied to every pixel of the
    complete ``species.zarr`` at ``species_url``; ``""`` = no data."""
    model = MapForest.fit("assemblage", assemblage, None, labels, species=species, trees=trees, seed=seed)
    raw = zarr.open_group(species_url, mode="r")["probability"]
    store = [str(s) for s in open_store(species_url)["species"].values]
    columns = np.asarray([store.index(s) for s in species])
    blocks = classify_pixels(model, np.asarray(raw[:]), columns, None, None, top_k=1)
    return class_codes(blocks.habitat, list(model.classes))


def _public(score: dict[str, Any]) -> dict[str, Any]:
    table = score["classes"].reset_index()
    return {**{k: v for k, v in score.items() if k != "classes"}, "classes": table.round(3).to_dict("records")}


def compare_with_truth(
    maps: dict[str, np.ndarray], truth: np.ndarray, *, training_plots: int, level: int = 3
) -> dict[str, Any]:
    """Habitat maps (name -> codes (y, x), ``""`` = no data; ``map``: the shipped one, ``direct_forest``: the peer)
    scored against ``truth`` on the pixels all have, each one's difference with the direct forest, and what a map
    of the commonest true class would score."""
    both = np.logical_and.reduce([m != "" for m in maps.values()])  # the same pixels for all
    scores = {name: score_habitat_map(np.where(both, m, ""), truth, level) for name, m in maps.items()}
    out: dict[str, Any] = {name: _public(s) for name, s in scores.items()}
    direct = scores["direct_forest"]
    for name in (n for n in maps if n != "direct_forest"):
        out[f"{name}_minus_direct"] = {
            f"accuracy_level{lvl}": round(scores[name][f"accuracy_level{lvl}"] - direct[f"accuracy_level{lvl}"], 4)
            for lvl in range(level, 0, -1)
        }
    out["training_plots"] = training_plots
    # What a map of one class (the commonest true one) would score: the floor every model must clear.
    scored = truth[both & (truth != "")]
    out["majority_class_share"] = {
        f"level{lvl}": round(float(pd.Series(cut_codes(scored, lvl)).value_counts(normalize=True).iloc[0]), 4)
        if len(scored)
        else float("nan")
        for lvl in range(level, 0, -1)
    }
    return out
