"""Ablation of the refresh's change noise on a two-year series already mapped: what each part of the noise model
does to the detection against the virtual region's true changes.

Reads the series under ``store.root`` (``species.zarr`` with ``clear_seasons``, ``indicators.zarr``) and the
region's truth, and scores ``changed`` (richness, or every indicator) with the refresh's own functions
(:func:`~geoplantnet.products.changes.fit_change_model`, :func:`~geoplantnet.products.changes.change_blocks`) and
the same bound (``refresh.false_alarm_rate``), the noise estimated four ways: one noise for the map, per coverage
stratum, per unit of the pixel's paired model spread, both (the refresh's). Nothing here chooses a setting: the
bound is the configured false-alarm rate's; this shows what each part does.

    PYTHONPATH=. .venv/bin/python benchmarks/change_ablation.py --config pipelines/refresh.yaml --year 2025
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from geoplantnet.core.config import load_config
from geoplantnet.evaluation.changes import detection_scores
from geoplantnet.products.change_noise import family_z, interval_names
from geoplantnet.products.changes import INDICATORS, change_blocks, fit_change_model
from geoplantnet.runs.inputs import region_truth
from geoplantnet.storage.store import open_store
from geoplantnet.storage.years import previous_year


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pipelines/refresh.yaml")
    parser.add_argument("--year", type=int, default=2025)
    args = parser.parse_args()
    cfg = load_config(args.config)
    root = Path(cfg.store.root)
    ind_url = str(root / "indicators.zarr")
    before_year = previous_year(ind_url, args.year)
    if before_year is None:
        raise SystemExit(f"{ind_url}: no complete year before {args.year}")
    ind = open_store(ind_url)
    clear = open_store(str(root / "species.zarr"), mask_and_scale=False)["clear_seasons"]
    names = [n for n in INDICATORS if n in ind]
    names += [v for n in names for v in interval_names(n) if v in ind]
    years = {y: {n: np.asarray(ind[n].sel(year=y).values, "float64") for n in names} for y in (before_year, args.year)}
    coverage = tuple(np.asarray(clear.sel(year=y).values) for y in (before_year, args.year))
    truth_ = region_truth(cfg)
    truth = np.asarray(truth_.changes(args.year).values)
    kinds = truth_.change_kinds(args.year)
    pixels = truth.size
    print(f"| noise | changed decided by | detected | precision | recall | F1 | recall {' / '.join(kinds)} |")
    print("|---|---|---|---|---|---|---|")
    for decides in (("richness_expected",), tuple(n for n in INDICATORS if n in ind)):
        z = family_z(cfg.refresh.false_alarm_rate, pixels, len(decides))
        for label, cov, spread in (
            ("one for the map", None, False),
            ("per coverage stratum", coverage, False),
            ("per unit of paired spread", None, True),
            ("stratum x paired spread (refresh)", coverage, True),
        ):
            keep = [n for n in names if spread or n in INDICATORS]
            b, a = ({n: years[y][n] for n in keep} for y in (before_year, args.year))
            model = fit_change_model(b, a, z=z, habitat_radius=None, coverage=cov, decides=decides)  # type: ignore[arg-type]
            changed = change_blocks(b, a, model, coverage=cov)["changed"]  # type: ignore[arg-type]
            s = detection_scores(changed, truth)
            by_kind = " / ".join(f"{float((changed[truth == c] == 1).mean()):.2f}" for c in kinds.values())
            who = "richness" if len(decides) == 1 else f"any of {len(decides)} indicators"
            print(f"| {label} | {who} | {s['detected']} | {s['precision']} | {s['recall']} | {s['f1']} | {by_kind} |")


if __name__ == "__main__":
    main()
