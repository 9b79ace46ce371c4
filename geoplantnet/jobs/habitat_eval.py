"""``habitat-map --evaluate``: the cascade's habitat map scored against the virtual region's true habitats, beside
the direct random forest (:mod:`geoplantnet.evaluation.habitats`); this driver gathers the region's plots, truth,
inputs and the species model's predictors."""

from __future__ import annotations

from typing import Any

from geoplantnet.core.config import RunConfig
from geoplantnet.evaluation.habitats import compare_with_truth, direct_forest_map, map_codes, peer_spec, truth_codes


def evaluate_habitat_map(cfg: RunConfig, habitat_url: str, species_model_url: str, level: int = 3) -> dict[str, Any]:
    """The cascade's map and the direct forest scored against the virtual region's true habitats (same pixels)."""
    from geoplantnet.inference.species import read_model
    from geoplantnet.runs.context import RunContext
    from geoplantnet.runs.inputs import run_inputs, virtual_plots

    plots, truth_url = virtual_plots(cfg)
    cascade, x, y = map_codes(habitat_url)
    truth = truth_codes(truth_url, x, y)
    _, spec, _ = read_model(species_model_url)
    inputs = run_inputs(cfg, observations=False)
    sources = RunContext(cfg).sources(inputs)
    cube_grid = cfg.grid.grid(cfg.cube.resolution) if sources.s2_items else None
    direct = direct_forest_map(sources, peer_spec(spec), cfg.grid.grid(), cube_grid, cfg.map.tile, plots, level)
    return compare_with_truth(cascade, direct, truth, training_plots=int(plots.labelled.sum()), level=level)
