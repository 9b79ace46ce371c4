"""Impact assessments of many random footprints on the virtual region against the generator's truth.

Draws ``--n`` rectangular footprints (sides ``--min-m``..``--max-m``, anywhere at least ``--margin-m`` inside the
region), gives each a new land-cover class (``--classes``, never the footprint's own majority class), assesses them
all in one run (one cluster, one plan, the tiles of every footprint streamed together, as ``offsets`` does) and scores
each against :func:`geoplantnet.sim.scenario.scenario_truth`: the footprint's and buffer's mean richness change,
whether the interval holds the truth, and the buffer's invented loss. Prints one JSON object (per-footprint rows and
the aggregates the README quotes).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/impact_footprints.py --n 20 --set impact.draws=4
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import shapely

from geoplantnet.core.config import load_config
from geoplantnet.evaluation.impact import evaluate_truth
from geoplantnet.products.impact import learn_edit
from geoplantnet.products.impact_summary import summarise
from geoplantnet.products.scenarios import Scenario
from geoplantnet.runs.assessment import Models, assess_many, planned, resolve_models
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.inputs import virtual_scenario_truth

ROOT = Path(__file__).resolve().parents[1]
NAMES = {1: "urban", 2: "cropland", 3: "grassland", 4: "broadleaf_forest", 5: "coniferous_forest"}


def footprints(cfg, n: int, seed: int, lo: float, hi: float, margin: float, classes: list[int]) -> list[tuple]:
    """``n`` random rectangles (grid CRS) with a new class each: not the footprint's majority class."""
    import rasterio
    import rasterio.features

    from geoplantnet.sim.region import RegionManifest

    manifest = RegionManifest.load(Path(cfg.workdir) / "region")
    with rasterio.open(manifest.root / "environment" / "land_cover.tif") as src:
        lc, transform = src.read(1), src.transform
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = cfg.grid.grid().bounds
    out = []
    while len(out) < n:
        w, h = rng.uniform(lo, hi, 2)
        cx = rng.uniform(x0 + margin + w / 2, x1 - margin - w / 2)
        cy = rng.uniform(y0 + margin + h / 2, y1 - margin - h / 2)
        box = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        inside = rasterio.features.geometry_mask([box], lc.shape, transform, invert=True)
        values, counts = np.unique(lc[inside], return_counts=True)
        own = int(values[np.argmax(counts)])
        choices = [c for c in classes if c != own]
        out.append((box, int(rng.choice(choices)), own))
    return out


MATERIAL = 2.0  # species per pixel: a change the truth makes at least this large


def _relative(pred: np.ndarray, model: np.ndarray, true: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """Mean |error| / mean |true| of the corrected estimate and of the models' own change, over ``keep``."""
    if not keep.any():
        return {"footprints": 0}
    scale = np.abs(true[keep]).mean()
    return {
        "footprints": int(keep.sum()),
        "relative_error": float(np.abs(pred - true)[keep].mean() / scale),
        "model_relative_error": float(np.abs(model - true)[keep].mean() / scale),
        "mean_ratio": float(np.mean(pred[keep] / true[keep])),
        "model_mean_ratio": float(np.mean(model[keep] / true[keep])),
    }


def _true_level(truth, a) -> tuple[float, float]:
    """The truth's mean richness in the footprint before and after."""
    before, after, _ = truth(a.grid, a.zones == 1, a.edit.code)
    m = a.zones == 1
    return float(before.richness[m].mean()), float(after.richness[m].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "default.yaml"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-m", type=float, default=150.0)
    ap.add_argument("--max-m", type=float, default=450.0)
    ap.add_argument("--margin-m", type=float, default=400.0)
    ap.add_argument("--classes", default="1,2,3", help="new land-cover codes drawn from")
    ap.add_argument("--edge-strength", type=float, default=None, help="the scenarios' edge_strength (default: theirs)")
    ap.add_argument("--model", default=None, help="species model file (default: the map's)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()

    cfg = load_config(args.config, overrides=args.set)
    ctx = RunContext(cfg, progress=False, overwrite=True)
    drawn = footprints(cfg, args.n, args.seed, args.min_m, args.max_m, args.margin_m,
                       [int(c) for c in args.classes.split(",")])  # fmt: skip
    extra = {} if args.edge_strength is None else {"edge_strength": args.edge_strength}
    scenarios = [Scenario(name=f"fp{i}", land_cover=code, **extra) for i, (_, code, _) in enumerate(drawn)]
    models = resolve_models(ctx, args.model, None, None)
    models = Models(models.species, models.habitats, None)  # the value model is not scored here
    t0 = time.perf_counter()
    with planned(ctx, scenarios[0], models) as (client, plan, _):
        edits = [learn_edit(plan.sources, plan.cube_grid, box, sc, plan.env_names)
                 for (box, _, _), sc in zip(drawn, scenarios, strict=True)]  # fmt: skip
        assessments = assess_many(client, ctx, plan, edits)
    rows = []
    truth = partial(virtual_scenario_truth, cfg)
    for (box, code, own), a in zip(drawn, assessments, strict=True):
        ev = evaluate_truth(plan, a, truth)
        s = summarise(plan, a)
        fp, buf = ev["zones"]["footprint"], ev["zones"]["buffer"]
        ci = s["change_intervals"].get("richness", {}).get("footprint", {})
        est = s.get("change_estimates", {}).get("richness", {}).get("footprint", {})
        rows.append({
            "bounds": [round(v) for v in box.bounds],
            "from": NAMES.get(own, own), "to": NAMES.get(code, code),
            "pixels": s["zones"]["footprint"]["pixels"],
            "richness_before": s["indicators"]["richness_expected"]["footprint"]["before"],
            "richness_after": s["indicators"]["richness_expected"]["footprint"]["after"],
            "true_before": _true_level(truth, a)[0], "true_after": _true_level(truth, a)[1],
            "richness_pred": fp["richness_change_predicted"], "richness_true": fp["richness_change_true"],
            "richness_model": fp.get("richness_change_model", fp["richness_change_predicted"]),
            "lower": est.get("lower", ci.get("lower")), "upper": est.get("upper", ci.get("upper")),
            "held": fp["richness_true_in_interval"], "held_mc": fp.get("richness_true_in_mc_interval"),
            "sd_draws": est.get("sd_draws"), "sd_calibration": est.get("sd_calibration"),
            "threatened_pred": fp["threatened_change_predicted"], "threatened_true": fp["threatened_change_true"],
            "buffer_pred": buf["richness_change_predicted"], "buffer_true": buf["richness_change_true"],
            "surroundings_pred": ev["zones"]["surroundings"]["richness_change_predicted"],
            "extrapolation": s.get("extrapolation"),
        })  # fmt: skip
    ok = [r for r in rows if r["pixels"] > 0 and np.isfinite(r["richness_true"])]
    pred = np.array([r["richness_pred"] for r in ok])
    true = np.array([r["richness_true"] for r in ok])
    rel = np.abs(pred - true) / np.maximum(np.abs(true), 1e-9)
    held = [r["held"] for r in ok if r["held"] is not None]
    held_mc = [r["held_mc"] for r in ok if r.get("held_mc") is not None]
    model = np.array([r["richness_model"] for r in ok])
    agg = {
        "footprints": len(ok),
        "mean_abs_error_over_mean_abs_true": float(np.abs(pred - true).mean() / np.abs(true).mean()),
        "median_relative_error": float(np.median(rel)),
        "mean_ratio_pred_over_true": float(np.mean(pred / np.where(true == 0, np.nan, true))),
        "coverage_footprint": float(np.mean(held)) if held else None,
        "coverage_mc_only": float(np.mean(held_mc)) if held_mc else None,
        "model_mean_abs_error_over_mean_abs_true": float(np.abs(model - true).mean() / np.abs(true).mean()),
        "buffer_mean_pred": float(np.mean([r["buffer_pred"] for r in ok])),
        "surroundings_max_abs": float(np.max(np.abs([r["surroundings_pred"] for r in ok]))),
        "threatened_mean_abs_error": float(np.mean([abs(r["threatened_pred"] - r["threatened_true"]) for r in ok])),
        "r_footprint": float(np.corrcoef(pred, true)[0, 1]),
        "mean_abs_error": float(np.abs(pred - true).mean()),
        "model_mean_abs_error": float(np.abs(model - true).mean()),
        "mean_abs_true": float(np.abs(true).mean()),
        # a relative error means little where the truth barely moves (grassland to cropland): the material changes
        "material": _relative(pred, model, true, np.abs(true) >= MATERIAL),
        "to_urban": _relative(pred, model, true, np.array([r["to"] == "urban" for r in ok])),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result = {"aggregate": agg, "rows": rows, "args": vars(args)}
    text = json.dumps(result, indent=1, default=float)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps(agg, indent=1))


if __name__ == "__main__":
    main()
