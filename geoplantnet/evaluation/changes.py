"""The change map against the virtual region's true changes: detection precision and recall, recall by kind of
change, the change of richness against the true change of the same species (everywhere and where land changed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geoplantnet.evaluation.registry import register_evaluation
from geoplantnet.evaluation.truth import VirtualTruth
from geoplantnet.products.base import Made, read_input
from geoplantnet.products.changes import PRODUCT, change_errors, detection_scores
from geoplantnet.storage.store import open_store


def evaluate_changes(ctx: Any, truth: VirtualTruth, made: Mapping[str, Made]) -> dict[str, Any]:
    """``change_detection``: the year's ``changes`` against the truth's changes since the previous year."""
    changes = made[PRODUCT]
    year, previous = int(ctx.year), int(changes.plan.attrs["previous_year"])
    codes = np.asarray(truth.changes(year).values)
    ds = open_store(changes.url, storage_options=ctx.options(changes.url), mask_and_scale=False)
    changed = np.asarray(ds.sel(year=year)["changed"].values)
    scores = detection_scores(changed, codes)
    # the change of richness against the true change of the map's species
    species = [str(s) for s in read_input(ctx, "species", "probability").ds["species"].values]
    before, after = truth.species(previous), truth.species(year)
    true_delta = (after.sel(species=species).sum("species") - before.sel(species=species).sum("species")).values
    delta = np.asarray(ds.sel(year=year)["richness_expected_change"].values, dtype="float64")
    scores["richness_change"] = {
        "all_pixels": change_errors(delta, true_delta),
        "changed_pixels": change_errors(delta[codes > 0], true_delta[codes > 0]),
    }
    scores["recall_by_kind"] = {}
    for name, code in truth.change_kinds(year).items():
        mask = codes == code
        if mask.any():
            scores["recall_by_kind"][name] = round(float((changed[mask] == 1).mean()), 4)
    return {"change_detection": scores}


register_evaluation(PRODUCT, evaluate_changes)
