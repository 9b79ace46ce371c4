"""How good a habitat map is on the virtual region: the cascade (species.zarr -> Pl@ntBERT -> habitat.zarr) against
the region's true habitats, beside a direct per-pixel peer (a random forest from the same point predictors as the
species model straight to the habitat, fitted at the labelled plots), so the report shows what the cascade adds or
costs. The peer's rows are :func:`geoplantnet.inference.points.pixel_features`, the rows the species peers are
fitted and mapped on; every pixel of the grid is predicted, tile by tile, on the driver (an evaluation region).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier

from geoplantnet.core.grid import Grid
from geoplantnet.inference.dense import tile_geometry
from geoplantnet.inference.points import pixel_features
from geoplantnet.models.peers import PeerSpec, feature_names
from geoplantnet.samples.plots import Plots, eunis_ancestor
from geoplantnet.storage.store import open_store
from geoplantnet.validation.habitat_maps import class_codes, cut_codes, score_habitat_map

if TYPE_CHECKING:
    from geoplantnet.models.species_net import ModelSpec


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


def peer_spec(spec: ModelSpec | PeerSpec) -> PeerSpec:
    """The species model's point predictors (its ``spec``) as a peer's spec (what :func:`pixel_features` reads for a
    pixel)."""
    seasons = spec.modalities["series"][-1] if "series" in spec.modalities else 0
    bands = list(spec.bands or []) if seasons else None
    return PeerSpec(
        kind="random_forest",
        species=["habitat"],
        variables=list(spec.variables) if spec.variables else None,
        bands=bands,
        seasons=seasons if bands else 0,
        features=feature_names(spec.variables, bands, seasons),
    )


def direct_forest_map(
    sources: Any,
    spec: PeerSpec,
    grid: Grid,
    cube_grid: Grid | None,
    tile_size: int,
    plots: Plots,
    level: int,
    *,
    trees: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """Habitat codes (y, x) of ``grid`` from a random forest on the pixels' point predictors (``spec``, read by
    ``sources``: the map's reader, ``sources.read(spec, geometry, grid, cube_grid)``), fitted on the labelled
    ``plots`` (codes cut to ``level``); ``""`` where a pixel has no data."""
    rows = np.full((grid.height, grid.width, len(spec.features)), np.nan, np.float32)
    for tile in grid.tiles(tile_size):  # an evaluation region: the grid's rows are held in memory
        geom = tile_geometry(spec, tile, grid, cube_grid)  # type: ignore[arg-type]
        patch, env = sources.read(spec, geom, grid, cube_grid)
        ys, xs = tile.slices
        rows[ys, xs] = pixel_features(spec, geom, patch, env).reshape(tile.height, tile.width, -1)
    labelled = plots.subset(plots.labelled)
    inside = grid.contains(labelled.x, labelled.y)
    r, c = grid.index(labelled.x[inside], labelled.y[inside])
    X = rows[r, c]
    y = np.asarray([eunis_ancestor(str(h), level) for h in labelled.habitat[inside]], dtype=object)
    # the maps' no-data rule: every environmental variable finite (S2-only: any finite value); a cloudy season
    # stays NaN, which the forest splits on as missing, as the species forest does
    n_env = len(spec.variables or ())
    has_data = (lambda a: np.isfinite(a[:, :n_env]).all(axis=1)) if n_env else (lambda a: np.isfinite(a).any(axis=1))
    ok = has_data(X)
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1).fit(X[ok], y[ok].astype(str))
    flat = rows.reshape(-1, rows.shape[-1])
    valid = has_data(flat)
    out = np.full(flat.shape[0], "", dtype=object)
    if valid.any():
        out[valid] = forest.predict(flat[valid])
    return out.reshape(grid.height, grid.width)


def _public(score: dict[str, Any]) -> dict[str, Any]:
    table = score["classes"].reset_index()
    return {**{k: v for k, v in score.items() if k != "classes"}, "classes": table.round(3).to_dict("records")}


def compare_with_truth(
    cascade: np.ndarray, direct: np.ndarray, truth: np.ndarray, *, training_plots: int, level: int = 3
) -> dict[str, Any]:
    """The cascade's map and the direct forest's (codes (y, x), ``""`` = no data) scored against ``truth`` on the
    pixels both have, their difference, and what a map of the commonest true class would score."""
    both = (cascade != "") & (direct != "")  # the same pixels for both
    scores = {
        "cascade": score_habitat_map(np.where(both, cascade, ""), truth, level),
        "direct_forest": score_habitat_map(np.where(both, direct, ""), truth, level),
    }
    out = {name: _public(s) for name, s in scores.items()}
    out["cascade_minus_direct"] = {
        f"accuracy_level{lvl}": round(
            scores["cascade"][f"accuracy_level{lvl}"] - scores["direct_forest"][f"accuracy_level{lvl}"], 4
        )
        for lvl in range(level, 0, -1)
    }
    out["training_plots"] = training_plots
    # What a map of one class (the commonest true one) would score: the floor both models must clear.
    scored = truth[both & (truth != "")]
    out["majority_class_share"] = {
        f"level{lvl}": round(float(pd.Series(cut_codes(scored, lvl)).value_counts(normalize=True).iloc[0]), 4)
        if len(scored)
        else float("nan")
        for lvl in range(level, 0, -1)
    }
    return out
